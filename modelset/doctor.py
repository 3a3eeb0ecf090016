"""``modelset doctor``: a pre-flight of everything a run needs, paying for nothing.

Each check is a plain function returning :class:`CheckResult` (or a few), in the order
the command prints them: the token, the template catalogue, the output location, the
Prefect API (its work pools and the global concurrency limit), the callback receiver,
and whether the service answers result lookups by ``request_id``. Nothing is submitted:
the calls made are a template listing, result lookups, a conditional-write probe that
leaves nothing behind, and a few GETs. Prefect is imported only by the checks that need
it (a token in a Secret block, a configured Prefect API).

Exit code (:func:`exit_code`): 3 when the service refused the account, 2 when a check
that the configured mode needs failed, 0 otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from modelset._exceptions import ExitCode, MissingTokenError
from modelset.hidream import (
    AccountError,
    HiDreamClient,
    HiDreamError,
    NoCredits,
    Template,
    TokenRejected,
)
from modelset.settings import Settings
from modelset.storage import Store, is_relative_location, open_store, probe_conditional_writes

HTTP_TIMEOUT_S = 10.0
"""Cap on one GET of the Prefect API or the callback receiver."""
SERVICE_READ_TIMEOUT_S = 15.0
SERVICE_ATTEMPTS = 2
"""The doctor asks the service quickly: a hung service must not hold it for minutes."""
RECEIVER_HEALTH_PATH = "/healthz"  # modelset.deployments.callbacks' health route
PREFECT_YAML = "prefect.yaml"
LOOKUP_SETTING = "HIDREAM_LOOKUP_BY_REQUEST_ID"


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


@dataclass
class ServiceProbe:
    """What the token check learnt, for the checks that follow it."""

    token: SecretStr | None = None
    """The token the service accepted; None if it was missing, refused or unchecked."""
    templates: list[Template] | None = None
    why_not: str = "the token check did not run"


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
    return results


# -- 1, 2: the token and the catalogue ---------------------------------------------------


def doctor_client(settings: Settings, token: SecretStr) -> HiDreamClient:
    """A client like a run's, but quick to give up: the doctor reports, it does not wait."""
    quick = settings.model_copy(
        update={
            "read_timeout": min(settings.read_timeout, SERVICE_READ_TIMEOUT_S),
            "max_attempts": min(settings.max_attempts, SERVICE_ATTEMPTS),
        }
    )
    return HiDreamClient.from_settings(quick, token=token)


async def check_token(settings: Settings) -> tuple[CheckResult, ServiceProbe]:
    """The token is configured, and the service accepts it on one free, authenticated
    call: the template listing (every call of the API is authenticated; listing the
    templates pays for nothing and is needed by the catalogue check anyway)."""
    name = "token"
    probe = ServiceProbe()
    if settings.api_token is not None and settings.api_token.get_secret_value():
        source = "HIDREAM_API_TOKEN"
        token: SecretStr = settings.api_token
    elif settings.api_token_block:
        source = f"the token in the Prefect Secret block {settings.api_token_block!r}"
        try:
            from modelset.credentials import resolve_token

            token = await resolve_token(settings)
        except Exception as exc:
            probe.why_not = "no token could be loaded"
            return CheckResult(
                name,
                False,
                f"{source} (HIDREAM_API_TOKEN_BLOCK) could not be loaded: {_first_line(exc)}",
                hint="create the block (a Prefect Secret) on the Prefect API this runs "
                "against, or set HIDREAM_API_TOKEN instead",
            ), probe
    else:
        probe.why_not = "no token is configured"
        return CheckResult(
            name,
            False,
            "not configured",
            hint=str(MissingTokenError()).removeprefix("no HiDream API token: "),
        ), probe
    try:
        async with doctor_client(settings, token) as client:
            templates = await client.list_templates()
    except TokenRejected as exc:
        probe.why_not = "the token was rejected"
        hint = (
            f"or update the Secret block {settings.api_token_block!r}"
            if source != "HIDREAM_API_TOKEN"
            else ""
        )
        return CheckResult(name, False, exc.message, hint=hint, refused=True), probe
    except NoCredits as exc:
        probe.why_not = "the account has no credits"
        return CheckResult(
            name, False, exc.message, hint="add credits to the HiDream account", refused=True
        ), probe
    except AccountError as exc:
        probe.why_not = "the account was refused"
        return CheckResult(name, False, exc.message, refused=True), probe
    except HiDreamError as exc:
        probe.why_not = "the service did not answer"
        return CheckResult(
            name,
            False,
            f"could not be checked: {exc.message}",
            hint=f"check HIDREAM_BASE_URL (now {settings.base_url}) and the network",
        ), probe
    probe.token = token
    probe.templates = templates
    return CheckResult(
        name,
        True,
        f"{source} is accepted by {settings.base_url} (credits show only when a set is submitted)",
    ), probe


def check_catalogue(probe: ServiceProbe, template_ids: Sequence[int] = ()) -> CheckResult:
    """The catalogue lists templates, and every template id asked about is in it."""
    name = "catalogue"
    if probe.templates is None:
        return CheckResult(name, False, f"not checked: {probe.why_not}", skipped=True)
    templates = probe.templates
    if not templates:
        return CheckResult(
            name,
            False,
            "the service lists no templates",
            hint="check HIDREAM_BASE_URL: nothing can be generated without a template",
        )
    genders: dict[str, int] = {}
    for template in templates:
        gender = template.gender or "unspecified"
        genders[gender] = genders.get(gender, 0) + 1
    split = ", ".join(f"{count} {gender}" for gender, count in sorted(genders.items()))
    detail = f"{len(templates)} templates ({split})"
    known = {template.id for template in templates}
    wanted = list(dict.fromkeys(template_ids))
    missing = [template_id for template_id in wanted if template_id not in known]
    if missing:
        listed = ", ".join(str(template_id) for template_id in missing)
        return CheckResult(
            name,
            False,
            f"{detail}; not in the catalogue: {listed}",
            hint="pick ids that `modelset templates` lists",
        )
    if wanted:
        detail += f"; {', '.join(str(template_id) for template_id in wanted)} found"
    return CheckResult(name, True, detail)


# -- 3: the output location -----------------------------------------------------------------


def check_output(location: str) -> tuple[CheckResult, Store | None]:
    """The location opens, and honours create-if-absent and compare-and-swap (the probe
    writes one object of its own and removes it)."""
    name = "output"
    try:
        store = open_store(location)
        probe_conditional_writes(store)
    except Exception as exc:
        message = _first_line(exc)
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


# -- 4: the Prefect API -----------------------------------------------------------------------


def find_prefect_yaml(explicit: Path | None = None) -> Path | None:
    """``explicit``, else the repository's prefect.yaml (next to the package), else the
    current directory's; None when there is none."""
    if explicit is not None:
        return explicit
    package_root = Path(__file__).resolve().parent.parent
    for candidate in (package_root / PREFECT_YAML, Path.cwd() / PREFECT_YAML):
        if candidate.is_file():
            return candidate
    return None


def work_pool_names(path: Path) -> list[str]:
    """The distinct ``work_pool: name:`` of the deployments in a prefect.yaml, in order."""
    import yaml

    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(document, dict):
        raise ValueError(f"{path} is not a mapping")
    names: list[str] = []
    for deployment in document.get("deployments") or []:
        if not isinstance(deployment, dict):
            continue
        pool = deployment.get("work_pool")
        pool_name = pool.get("name") if isinstance(pool, dict) else None
        if isinstance(pool_name, str) and pool_name and pool_name not in names:
            names.append(pool_name)
    return names


async def check_prefect(
    api_url: str | None,
    *,
    prefect_yaml: Path | None = None,
    concurrency_limit: str | None = None,
    api_key: str | None = None,
) -> list[CheckResult]:
    """The Prefect API answers, prefect.yaml's work pools exist on it, and so does the
    global concurrency limit HIDREAM_CONCURRENCY_LIMIT names (every submit takes a slot
    of it, strictly: a missing limit fails the submit)."""
    if not api_url:
        results = [
            CheckResult(
                "prefect",
                True,
                "PREFECT_API_URL is not set: runs use Prefect's temporary local server",
                hint="fine for the CLI; deployments, workers and `modelset serve` need a "
                "server: set PREFECT_API_URL",
                skipped=True,
            )
        ]
        if concurrency_limit:
            results.append(
                CheckResult(
                    "concurrency",
                    False,
                    f"HIDREAM_CONCURRENCY_LIMIT={concurrency_limit} is not checked on the "
                    "temporary local server; a run fails if the limit is missing there",
                    hint=f"prefect gcl create {concurrency_limit} --limit N, or set "
                    "PREFECT_API_URL",
                    needed=False,
                )
            )
        return results
    base = api_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, headers=headers) as http:
            health = await http.get(f"{base}/health")
    except httpx.HTTPError as exc:
        return [
            CheckResult(
                "prefect",
                False,
                f"{base} does not answer: {_first_line(exc) or type(exc).__name__}",
                hint="start the server (prefect server start) or fix PREFECT_API_URL",
            )
        ]
    if health.status_code != 200:
        return [
            CheckResult(
                "prefect",
                False,
                f"{base}/health answered HTTP {health.status_code}",
                hint="check PREFECT_API_URL (it ends in /api) and PREFECT_API_KEY",
            )
        ]
    results = [CheckResult("prefect", True, f"the API at {base} answers")]
    results.append(await check_work_pools(find_prefect_yaml(prefect_yaml)))
    if concurrency_limit:
        results.append(await check_concurrency_limit(concurrency_limit))
    return results


async def check_work_pools(path: Path | None) -> CheckResult:
    """Each work pool prefect.yaml's deployments name exists on the Prefect API."""
    name = "work pools"
    if path is None:
        return CheckResult(
            name,
            True,
            f"no {PREFECT_YAML} here or next to the package: no deployments to check",
            skipped=True,
        )
    try:
        pools = work_pool_names(path)
    except Exception as exc:
        return CheckResult(
            name, False, f"could not read {path}: {_first_line(exc)}", hint="fix the file"
        )
    if not pools:
        return CheckResult(name, True, f"{path} names no work pool", skipped=True)
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    found: list[str] = []
    missing: list[str] = []
    try:
        async with get_client() as client:
            for pool in pools:
                try:
                    await client.read_work_pool(pool)
                except ObjectNotFound:
                    missing.append(pool)
                else:
                    found.append(pool)
    except Exception as exc:
        return CheckResult(name, False, f"could not be read: {_first_line(exc)}")
    if missing:
        detail = f"missing on the Prefect API: {', '.join(missing)} (named in {path})"
        if found:
            detail += f"; found: {', '.join(found)}"
        commands = "; ".join(f"prefect work-pool create {pool} --type process" for pool in missing)
        return CheckResult(name, False, detail, hint=commands)
    return CheckResult(name, True, f"{', '.join(found)} exist (named in {path})")


async def check_concurrency_limit(limit_name: str) -> CheckResult:
    """The global concurrency limit exists (submits acquire it strictly)."""
    name = "concurrency"
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    create = f"prefect gcl create {limit_name} --limit N"
    try:
        async with get_client() as client:
            limit = await client.read_global_concurrency_limit_by_name(limit_name)
    except ObjectNotFound:
        return CheckResult(
            name,
            False,
            f"HIDREAM_CONCURRENCY_LIMIT={limit_name}: no such global concurrency limit; "
            "every submit would fail",
            hint=f"{create} (N: the account's concurrent requests), or unset "
            "HIDREAM_CONCURRENCY_LIMIT",
        )
    except Exception as exc:
        return CheckResult(name, False, f"could not be read: {_first_line(exc)}")
    if limit.limit < 1:
        return CheckResult(
            name,
            False,
            f"{limit_name} has a limit of {limit.limit}: no submit can take a slot",
            hint=f"prefect gcl update {limit_name} --limit N",
        )
    if not limit.active:
        return CheckResult(
            name,
            False,
            f"{limit_name} exists but is inactive: it limits nothing",
            hint=f"prefect gcl enable {limit_name}",
            needed=False,
        )
    return CheckResult(name, True, f"{limit_name}: {limit.limit} slots, active")


# -- 5: the callback receiver -----------------------------------------------------------------


async def check_callback(settings: Settings) -> CheckResult:
    """The receiver at HIDREAM_CALLBACK_URL answers its health route and knows the
    secret. The secret is tested with a GET of the callback route, which the receiver
    answers 405 when the secret matches and 404 when not; nothing is delivered."""
    name = "callback"
    if not settings.callback_url:
        return CheckResult(
            name,
            True,
            "HIDREAM_CALLBACK_URL is not set: runs poll for results (no callbacks)",
            skipped=True,
        )
    from modelset.deployments.callbacks import MIN_SECRET_CHARS

    base = settings.callback_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        return CheckResult(
            name,
            False,
            f"HIDREAM_CALLBACK_URL={base} is not an http(s) URL",
            hint="set it to the receiver's public base URL, e.g. https://hooks.example.com",
        )
    notify_url = settings.notify_url()
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, follow_redirects=False) as http:
            health = await http.get(f"{base}{RECEIVER_HEALTH_PATH}")
            answer = _json_or_none(health)
            if health.status_code != 200 or not (
                isinstance(answer, dict) and answer.get("ok") is True
            ):
                return CheckResult(
                    name,
                    False,
                    f"{base}{RECEIVER_HEALTH_PATH} answered HTTP {health.status_code}, not "
                    "the modelset receiver's health",
                    hint="point HIDREAM_CALLBACK_URL at the receiver (modelset callbacks)",
                )
            if notify_url is None:
                return CheckResult(
                    name,
                    False,
                    f"the receiver at {base} answers, but HIDREAM_CALLBACK_SECRET is not set",
                    hint="set HIDREAM_CALLBACK_SECRET to the receiver's secret",
                )
            route = await http.get(notify_url)
    except httpx.HTTPError as exc:
        return CheckResult(
            name,
            False,
            f"the receiver at {base} does not answer: {_first_line(exc) or type(exc).__name__}",
            hint="start it (modelset callbacks) where HIDREAM_CALLBACK_URL points",
        )
    secret = settings.callback_secret.get_secret_value() if settings.callback_secret else ""
    short = (
        f"; the secret has fewer than {MIN_SECRET_CHARS} characters: use a long random one"
        if len(secret) < MIN_SECRET_CHARS
        else ""
    )
    if route.status_code == 404:
        return CheckResult(
            name,
            False,
            f"the receiver at {base} answers but does not know this HIDREAM_CALLBACK_SECRET: "
            "every callback would be refused",
            hint="give the runs and the receiver the same HIDREAM_CALLBACK_SECRET",
        )
    if route.status_code != 405:
        return CheckResult(
            name,
            False,
            f"the receiver at {base} answers; its callback route answered HTTP "
            f"{route.status_code}, so the secret could not be confirmed",
            hint="check what is in front of the receiver" + short,
            needed=False,
        )
    return CheckResult(
        name,
        not short,
        f"the receiver at {base} answers and knows the secret",
        hint=short.removeprefix("; "),
        needed=not short,
    )


# -- 6: lookups by request_id ---------------------------------------------------------------


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
            f"cannot tell: the output location {store.url} could not be read ({_first_line(exc)})",
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


# -- 7: the budget across runs ---------------------------------------------------------------


def check_budget(settings: Settings, store: Store | None) -> CheckResult:
    """What HIDREAM_BUDGET_IMAGES has left this period at the output location."""
    name = "budget"
    if settings.budget_images is None:
        return CheckResult(
            name, True, "no budget across runs (HIDREAM_BUDGET_IMAGES is not set)", skipped=True
        )
    if store is None:
        return CheckResult(name, True, "not checked: needs a usable output location", skipped=True)
    from modelset.budget import PeriodBudget

    budget = PeriodBudget.from_settings(settings, store)
    assert budget is not None
    try:
        left = budget.left()
    except Exception as exc:
        return CheckResult(name, False, f"could not be read ({_first_line(exc)})")
    return CheckResult(
        name,
        left.left > 0,
        left.describe(),
        hint="nothing is sent until it resets; raise HIDREAM_BUDGET_IMAGES to send sooner",
        needed=False,
    )


# -- helpers ----------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
