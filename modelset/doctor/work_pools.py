"""Check 4, continued: the work pools prefect.yaml's deployments name exist."""

from __future__ import annotations

from pathlib import Path

from modelset.doctor.result import CheckResult, first_line

PREFECT_YAML = "prefect.yaml"


def find_prefect_yaml(explicit: Path | None = None) -> Path | None:
    """``explicit``, else the repository's prefect.yaml (next to the package), else the
    current directory's; None when there is none."""
    if explicit is not None:
        return explicit
    beside_package = Path(__file__).resolve().parents[2]  # modelset/doctor/work_pools.py
    for candidate in (beside_package / PREFECT_YAML, Path.cwd() / PREFECT_YAML):
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
            name, False, f"could not read {path}: {first_line(exc)}", hint="fix the file"
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
        return CheckResult(name, False, f"could not be read: {first_line(exc)}")
    if missing:
        detail = f"missing on the Prefect API: {', '.join(missing)} (named in {path})"
        if found:
            detail += f"; found: {', '.join(found)}"
        commands = "; ".join(f"prefect work-pool create {pool} --type process" for pool in missing)
        return CheckResult(name, False, detail, hint=commands)
    return CheckResult(name, True, f"{', '.join(found)} exist (named in {path})")
