"""Check 4: the Prefect API answers, with the work pools and the global concurrency limit
a run takes."""

from __future__ import annotations

from pathlib import Path

import httpx

from modelset.doctor.result import HTTP_TIMEOUT_S, CheckResult, first_line
from modelset.doctor.work_pools import check_work_pools, find_prefect_yaml


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
                f"{base} does not answer: {first_line(exc)}",
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
        return CheckResult(name, False, f"could not be read: {first_line(exc)}")
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
