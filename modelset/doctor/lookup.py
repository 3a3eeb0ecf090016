"""Check 6: whether a lost answer is looked up by its request_id, or waits for its
callback or ``modelset settle``."""

from __future__ import annotations

from pydantic import SecretStr

from modelset.doctor.result import CheckResult, first_line
from modelset.doctor.service import doctor_client
from modelset.settings import Settings
from modelset.storage import Store

LOOKUP_SETTING = "HIDREAM_LOOKUP_BY_REQUEST_ID"


async def check_lookup(
    settings: Settings, token: SecretStr | None, store: Store | None
) -> CheckResult:
    """Whether a submit whose answer was lost can be resolved by looking its request_id up.

    The public docs promise lookups by task_id only, so runs look a lost answer up only
    with a proof for this base URL (``modelset.ledger.proof``): the one the output location
    keeps, or, where a run has not taken it yet, one taken now from a request the ledger
    says the service accepted (one GET, kept for every later run). Either answer is a
    working configuration; without the lookup, lost answers wait for their callback or
    ``modelset settle``.
    """
    name = "request_id lookup"
    if not settings.lookup_by_request_id:
        return CheckResult(
            name,
            True,
            f"{LOOKUP_SETTING}=false: lost answers are never looked up; they are collected "
            "by their callback or `modelset settle`",
        )
    if token is None:
        return CheckResult(name, True, "not checked: needs an accepted token", skipped=True)
    if store is None:
        return CheckResult(name, True, "not checked: needs a usable output location", skipped=True)
    from modelset.ledger import open_ledger
    from modelset.ledger.proof import read_proof, take_proof

    try:
        proof = read_proof(store, settings.base_url)
        accepted = None if proof is not None else open_ledger(store).accepted()
    except Exception as exc:
        return CheckResult(
            name,
            True,
            f"cannot tell: the output location {store.url} could not be read ({first_line(exc)})",
            skipped=True,
        )
    if proof is None and (accepted is None or accepted.task_id is None):
        return CheckResult(
            name,
            True,
            f"cannot tell yet: the ledger at {store.url} holds no request the service "
            "accepted; the first run takes the proof",
            skipped=True,
        )
    if proof is None and accepted is not None:
        async with doctor_client(settings, token) as client:
            proof = await take_proof(client, store, accepted)
        if proof is None:
            return CheckResult(name, True, "cannot tell: the lookup failed", skipped=True)
    assert proof is not None
    if proof.finds_by_request_id:
        return CheckResult(name, True, f"{proof.describe()}: lost answers are looked up")
    callbacks = settings.notify_url() is not None
    return CheckResult(
        name,
        callbacks,
        f"{proof.describe()}: a lost answer is never resent; "
        + (
            "its callback collects it"
            if callbacks
            else "it stays paid, not collected until `modelset settle` collects it"
        ),
        hint="" if callbacks else "configure callbacks (HIDREAM_CALLBACK_URL) to collect them",
        needed=False,
    )
