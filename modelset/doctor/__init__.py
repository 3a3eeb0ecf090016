"""``modelset doctor``: a pre-flight of everything a run needs, paying for nothing.

Each check is a plain function returning :class:`CheckResult` (or a few), one module
each, in the order the command prints them: the token and the template catalogue
(``service``), the output location (``output``), the Prefect API with its work pools
and the global concurrency limit (``prefect_api``, ``work_pools``), the callback receiver
(``callback``), whether the service answers result lookups by ``request_id``
(``lookup``), the budget across runs (``budget``), and the C2PA signing key
(``signing``). Nothing is submitted: the calls
made are a template listing, result lookups, a conditional-write probe that leaves
nothing behind, and a few GETs. Prefect is imported only by the checks that need it (a
token in a Secret block, a configured Prefect API).

Exit code (:func:`exit_code`, the codes of :mod:`modelset._exceptions`): 3 when the
service refused the account, 2 when a check that the configured mode needs failed, 0
otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from modelset._exceptions import ExitCode
from modelset.doctor.budget import check_budget
from modelset.doctor.callback import check_callback
from modelset.doctor.lookup import check_lookup
from modelset.doctor.output import check_output
from modelset.doctor.prefect_api import check_prefect
from modelset.doctor.result import CheckResult
from modelset.doctor.service import check_catalogue, check_token
from modelset.doctor.signing import check_signing
from modelset.settings import Settings

__all__ = [
    "CheckResult",
    "check_budget",
    "check_callback",
    "check_catalogue",
    "check_lookup",
    "check_output",
    "check_prefect",
    "check_signing",
    "check_token",
    "exit_code",
    "run_checks",
]


def exit_code(results: Sequence[CheckResult]) -> ExitCode:
    """3 if the account was refused; else 2 if a needed check failed; else 0."""
    if any(result.refused for result in results):
        return ExitCode.ACCOUNT
    if any(result.needed and not result.ok for result in results):
        return ExitCode.USAGE
    return ExitCode.OK


async def run_checks(
    settings: Settings,
    *,
    out: str | None = None,
    template_ids: Sequence[int] = (),
    prefect_yaml: Path | None = None,
) -> list[CheckResult]:
    """Every check, in order. PREFECT_API_URL (and PREFECT_API_KEY) are read from the
    environment, as the Prefect client reads them."""
    environ = os.environ
    results: list[CheckResult] = []
    token_result, probe = await check_token(settings)
    results.append(token_result)
    results.append(check_catalogue(probe, template_ids))
    output_result, store = check_output(out or settings.output_dir)
    results.append(output_result)
    results.extend(
        await check_prefect(
            environ.get("PREFECT_API_URL") or None,
            prefect_yaml=prefect_yaml,
            concurrency_limit=settings.concurrency_limit,
            api_key=environ.get("PREFECT_API_KEY") or None,
        )
    )
    results.append(await check_callback(settings))
    results.append(await check_lookup(settings, probe.token, store))
    results.append(check_budget(settings, store))
    results.append(await check_signing(settings))
    return results
