"""One line of the doctor's report, and what every check shares."""

from __future__ import annotations

from dataclasses import dataclass

HTTP_TIMEOUT_S = 10.0
"""Cap on one GET of the Prefect API or the callback receiver."""


@dataclass(frozen=True)
class CheckResult:
    """One line of the doctor's report.

    ``ok`` is whether the check found what it wants. A failure counts towards the exit
    code only when ``needed`` (the configured mode depends on it); otherwise it is
    advice. ``refused`` marks the service refusing the account (exit code 3).
    ``skipped`` marks a check that did not apply or could not run yet.
    """

    name: str
    ok: bool
    detail: str
    hint: str = ""
    needed: bool = True
    refused: bool = False
    skipped: bool = False


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
