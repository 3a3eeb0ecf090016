"""Check 3: the output location opens and honours conditional writes."""

from __future__ import annotations

from modelset.doctor.result import CheckResult, first_line
from modelset.storage import Store, is_relative_location, open_store, probe_conditional_writes


def check_output(location: str) -> tuple[CheckResult, Store | None]:
    """The location opens, and honours create-if-absent and compare-and-swap (the probe
    writes one object of its own and removes it)."""
    name = "output"
    try:
        store = open_store(location)
        probe_conditional_writes(store)
    except Exception as exc:
        message = first_line(exc)
        if location not in message:
            message = f"{location}: {message}"
        return CheckResult(
            name,
            False,
            message,
            hint="pass --out or set HIDREAM_OUTPUT_DIR to a writable folder or bucket that "
            "honours conditional writes",
        ), None
    detail = f"{store.url} is reachable and honours conditional writes"
    hint = ""
    if is_relative_location(location):
        detail += f" ({location!r} is relative: it resolves against the current directory)"
        hint = "deployments and workers need an absolute path or a bucket"
    return CheckResult(name, True, detail, hint=hint), store
