"""Prefect on PostgreSQL: a flow run against a server whose database is PostgreSQL 15."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import httpx

FLOW = """
from prefect import flow

@flow(name={name!r})
def smoke() -> int:
    return 42

assert smoke() == 42
"""


def test_a_flow_run_completes_on_the_postgres_server(
    prefect_postgres_server: str, postgres_url: str, tmp_path: Path
) -> None:
    name = f"postgres-smoke-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_postgres_server,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
    }
    done = subprocess.run(
        [sys.executable, "-c", FLOW.format(name=name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr

    response = httpx.post(
        f"{prefect_postgres_server}/flow_runs/filter",
        json={"flows": {"name": {"any_": [name]}}},
        timeout=30,
    )
    response.raise_for_status()
    assert [run["state"]["type"] for run in response.json()] == ["COMPLETED"]
    # The run is in PostgreSQL, not in a SQLite file the server fell back to.
    assert asyncio.run(states_in_postgres(postgres_url, name)) == ["COMPLETED"]


async def states_in_postgres(url: str, flow_name: str) -> list[str]:
    connection = await asyncpg.connect(url.replace("+asyncpg", "", 1))
    try:
        rows = await connection.fetch(
            "SELECT flow_run.state_type FROM flow_run JOIN flow ON flow.id = flow_run.flow_id"
            " WHERE flow.name = $1",
            flow_name,
        )
    finally:
        await connection.close()
    return [str(row["state_type"]) for row in rows]
