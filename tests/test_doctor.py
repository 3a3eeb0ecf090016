"""`modelset doctor` as a person runs it: a subprocess against the real sandbox, real
folders and buckets, a real Prefect server and a real callback receiver."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelset.deployments.callbacks import create_receiver_app
from modelset.sandbox import SandboxServer
from modelset.sandbox.store import TEMPLATES
from modelset.settings import Settings
from tests.conftest import TOKEN, SandboxFactory, free_port, hidream_env, make_photo
from tests.test_callbacks import Receiver

CHECKS = [
    "token",
    "catalogue",
    "output",
    "prefect",
    "callback",
    "request_id lookup",
    "budget",
    "signing",
]
SECRET = "doctor-callback-secret-4b8e1f2a"
# Set by fixtures of other tests (prefect_server puts its URL in os.environ): each test
# here says itself which of these the command sees.
DROPPED = ("PREFECT_API_URL", "PREFECT_API_KEY")


def modelset(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m modelset ARGS`` in ``cwd`` (no stray .env), seeing only the HIDREAM_*
    and PREFECT_API_* variables in ``env``."""
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("HIDREAM_") and key not in DROPPED
    }
    return subprocess.run(
        [sys.executable, "-m", "modelset", *args],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def lines(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The report's lines by check name (``<mark> <name>: <detail>``)."""
    found: dict[str, str] = {}
    for line in done.stdout.splitlines():
        mark, _, rest = line.partition(" ")
        name, sep, _ = rest.partition(": ")
        assert mark in ("✓", "✗", "!", "-") and sep, f"not a check line: {line!r}"
        found[name] = line
    return found


def explain(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"


def test_a_good_setup_passes_with_one_line_per_check_and_never_shows_the_token(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = modelset("doctor", "-t", "20", "-t", "21", env=hidream_env(sandbox, out), cwd=tmp_path)
    assert done.returncode == 0, explain(done)
    assert [line.split(": ")[0][2:] for line in done.stdout.splitlines()] == CHECKS
    report = lines(done)
    assert report["token"].startswith("✓")
    assert "accepted" in report["token"]
    assert report["catalogue"].startswith("✓")
    assert f"{len(TEMPLATES)} templates" in report["catalogue"]
    assert "20, 21 found" in report["catalogue"]
    assert str(out) in report["output"]
    assert "conditional writes" in report["output"]
    assert "relative" not in report["output"]
    assert "temporary local server" in report["prefect"]
    assert "poll" in report["callback"]
    assert "cannot tell yet" in report["request_id lookup"]
    assert TOKEN not in done.stdout + done.stderr
    assert sandbox.submissions() == [], "the doctor must pay for nothing"
    assert not list((out / ".modelset" / "probe").glob("*")), "the probe leaves nothing"


def test_a_relative_folder_is_said_to_resolve_against_the_current_directory(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    env = hidream_env(sandbox, HIDREAM_OUTPUT_DIR="relative-out")
    done = modelset("doctor", env=env, cwd=tmp_path)
    assert done.returncode == 0, explain(done)
    output = lines(done)["output"]
    assert str(tmp_path / "relative-out") in output
    assert "resolves against the current directory" in output
    assert "absolute path or a bucket" in output


def test_an_unknown_template_id_fails_the_catalogue(sandbox: SandboxServer, tmp_path: Path) -> None:
    done = modelset("doctor", "-t", "20", "-t", "999", env=hidream_env(sandbox), cwd=tmp_path)
    assert done.returncode == 2, explain(done)
    assert lines(done)["catalogue"].startswith("✗")
    assert "999" in lines(done)["catalogue"]


def test_a_rejected_token_exits_3_and_the_token_line_says_rejected(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    env = hidream_env(sandbox, tmp_path / "out", HIDREAM_API_TOKEN="expired-token-77qq")
    done = modelset("doctor", env=env, cwd=tmp_path)
    assert done.returncode == 3, explain(done)
    report = lines(done)
    assert report["token"].startswith("✗")
    assert "rejected" in report["token"]
    assert list(report) == CHECKS, "the other checks still run"
    assert "expired-token-77qq" not in done.stdout + done.stderr


def test_no_token_exits_2_naming_the_variable_to_set(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    env = hidream_env(sandbox, tmp_path / "out")
    del env["HIDREAM_API_TOKEN"]
    done = modelset("doctor", env=env, cwd=tmp_path)
    assert done.returncode == 2, explain(done)
    token = lines(done)["token"]
    assert token.startswith("✗")
    assert "HIDREAM_API_TOKEN" in token


def test_an_unreachable_service_exits_2(tmp_path: Path) -> None:
    env = {
        "HIDREAM_BASE_URL": f"http://127.0.0.1:{free_port()}",
        "HIDREAM_API_TOKEN": TOKEN,
        "HIDREAM_OUTPUT_DIR": str(tmp_path / "out"),
    }
    done = modelset("doctor", env=env, cwd=tmp_path)
    assert done.returncode == 2, explain(done)
    assert "HIDREAM_BASE_URL" in lines(done)["token"]


def test_a_bucket_that_honours_conditional_writes_passes(
    sandbox: SandboxServer, bucket: str, tmp_path: Path
) -> None:
    done = modelset("doctor", env=hidream_env(sandbox, HIDREAM_OUTPUT_DIR=bucket), cwd=tmp_path)
    assert done.returncode == 0, explain(done)
    assert lines(done)["output"].startswith(f"✓ output: {bucket} ")


def test_a_bucket_that_ignores_conditional_writes_exits_2_naming_it(
    sandbox: SandboxServer, careless_bucket: str, tmp_path: Path
) -> None:
    done = modelset("doctor", "--out", careless_bucket, env=hidream_env(sandbox), cwd=tmp_path)
    assert done.returncode == 2, explain(done)
    output = lines(done)["output"]
    assert output.startswith("✗")
    assert careless_bucket in output
    assert "ignores conditional writes" in output


def test_the_lookup_line_shows_the_proof_the_run_took(
    sandbox_factory: SandboxFactory, tmp_path: Path, prefect_server: str
) -> None:
    out = tmp_path / "out"
    documented = sandbox_factory()  # results by task_id only, as the public docs promise
    photo = make_photo(tmp_path / "in" / "look.jpg")
    ran = modelset(
        "run",
        str(photo),
        "-t",
        "20",
        env={**hidream_env(documented, out), "PREFECT_API_URL": prefect_server},
        cwd=tmp_path,
        timeout=240,
    )
    assert ran.returncode == 0, explain(ran)
    proofs = list((out / ".modelset" / "lookup-proofs").glob("*.json"))
    assert len(proofs) == 1, "the run took the proof from its first accepted request"

    shown = modelset("doctor", env=hidream_env(documented, out), cwd=tmp_path)
    assert shown.returncode == 0, explain(shown)  # advice: nothing the run needs
    lookup = lines(shown)["request_id lookup"]
    assert lookup.startswith("!")
    assert "not proven" in lookup and "'task not found'" in lookup
    assert "a lost answer is never resent" in lookup
    assert "HIDREAM_CALLBACK_URL" in lookup

    # Another output location, whose ledger holds a request this service accepted but
    # no proof yet: the doctor takes it (one lookup) and keeps it.
    finds = sandbox_factory(lookup_by_request_id=True)
    other = tmp_path / "other"
    ran = modelset(
        "run",
        str(photo),
        "-t",
        "20",
        env={
            **hidream_env(finds, other, HIDREAM_LOOKUP_BY_REQUEST_ID="false"),
            "PREFECT_API_URL": prefect_server,
        },
        cwd=tmp_path,
        timeout=240,
    )
    assert ran.returncode == 0, explain(ran)
    assert not (other / ".modelset" / "lookup-proofs").exists(), "false: no lookup at all"
    proven = modelset("doctor", env=hidream_env(finds, other), cwd=tmp_path)
    lookup = lines(proven)["request_id lookup"]
    assert lookup.startswith("✓"), lookup
    assert "proven on" in lookup and "lost answers are looked up" in lookup
    assert len(list((other / ".modelset" / "lookup-proofs").glob("*.json"))) == 1
    assert len(documented.submissions()) == len(finds.submissions()) == 1, "only runs paid"


def write_prefect_yaml(path: Path, *pools: str) -> Path:
    deployments = "".join(
        f"  - name: d{index}\n    entrypoint: x.py:f\n    work_pool:\n      name: {pool}\n"
        for index, pool in enumerate(pools)
    )
    path.write_text(f"name: doctor-test\ndeployments:\n{deployments}")
    return path


def test_a_missing_work_pool_exits_2_with_the_command_that_creates_it(
    sandbox: SandboxServer, tmp_path: Path, prefect_server: str
) -> None:
    missing = f"doctor-missing-{uuid.uuid4().hex[:8]}"
    project = write_prefect_yaml(tmp_path / "prefect.yaml", missing, missing)
    env = {**hidream_env(sandbox, tmp_path / "out"), "PREFECT_API_URL": prefect_server}
    done = modelset("doctor", "--prefect-yaml", str(project), env=env, cwd=tmp_path)
    assert done.returncode == 2, explain(done)
    report = lines(done)
    assert report["prefect"].startswith("✓")
    pools = report["work pools"]
    assert pools.startswith("✗")
    assert missing in pools
    assert f"prefect work-pool create {missing} --type process" in pools
    assert pools.count(f"create {missing} ") == 1, "each pool once"


def test_existing_pools_and_concurrency_limit_pass_and_a_missing_limit_fails(
    sandbox: SandboxServer, tmp_path: Path, prefect_server: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate

    pool, limit = f"doctor-pool-{uuid.uuid4().hex[:8]}", f"doctor-gcl-{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=limit, limit=3)
            )

    asyncio.run(create())
    project = write_prefect_yaml(tmp_path / "prefect.yaml", pool)
    env = {**hidream_env(sandbox, tmp_path / "out"), "PREFECT_API_URL": prefect_server}
    done = modelset(
        "doctor",
        "--prefect-yaml",
        str(project),
        env={**env, "HIDREAM_CONCURRENCY_LIMIT": limit},
        cwd=tmp_path,
    )
    assert done.returncode == 0, explain(done)
    report = lines(done)
    assert report["work pools"].startswith("✓")
    assert pool in report["work pools"]
    assert report["concurrency"].startswith("✓")
    assert "3 slots" in report["concurrency"]

    absent = f"doctor-absent-{uuid.uuid4().hex[:8]}"
    done = modelset(
        "doctor",
        "--prefect-yaml",
        str(project),
        env={**env, "HIDREAM_CONCURRENCY_LIMIT": absent},
        cwd=tmp_path,
    )
    assert done.returncode == 2, explain(done)
    assert absent in lines(done)["concurrency"]
    assert f"prefect gcl create {absent}" in lines(done)["concurrency"]


def test_an_unreachable_prefect_api_exits_2(sandbox: SandboxServer, tmp_path: Path) -> None:
    api = f"http://127.0.0.1:{free_port()}/api"
    env = {**hidream_env(sandbox, tmp_path / "out"), "PREFECT_API_URL": api}
    done = modelset("doctor", env=env, cwd=tmp_path)
    assert done.returncode == 2, explain(done)
    assert lines(done)["prefect"].startswith("✗")
    assert api in lines(done)["prefect"]


@pytest.fixture
def receiver(sandbox: SandboxServer) -> Iterator[Receiver]:
    """The real callback receiver app on a free port, with SECRET."""
    settings = Settings(
        _env_file=None, base_url=sandbox.base_url, api_token=TOKEN, callback_secret=SECRET
    )
    started = Receiver(create_receiver_app(settings)).start()
    yield started
    started.stop()


def test_a_callback_receiver_that_knows_the_secret_passes(
    sandbox: SandboxServer, receiver: Receiver, tmp_path: Path
) -> None:
    env = hidream_env(
        sandbox,
        tmp_path / "out",
        HIDREAM_CALLBACK_URL=receiver.base_url,
        HIDREAM_CALLBACK_SECRET=SECRET,
    )
    done = modelset("doctor", env=env, cwd=tmp_path)
    assert done.returncode == 0, explain(done)
    assert lines(done)["callback"].startswith("✓")
    assert "knows the secret" in lines(done)["callback"]
    assert SECRET not in done.stdout + done.stderr


def test_a_callback_receiver_with_another_secret_or_none_at_all_exits_2(
    sandbox: SandboxServer, receiver: Receiver, tmp_path: Path
) -> None:
    wrong = hidream_env(
        sandbox,
        tmp_path / "out",
        HIDREAM_CALLBACK_URL=receiver.base_url,
        HIDREAM_CALLBACK_SECRET="another-secret-of-enough-length",
    )
    done = modelset("doctor", env=wrong, cwd=tmp_path)
    assert done.returncode == 2, explain(done)
    assert "does not know this HIDREAM_CALLBACK_SECRET" in lines(done)["callback"]

    no_secret = hidream_env(sandbox, tmp_path / "out", HIDREAM_CALLBACK_URL=receiver.base_url)
    done = modelset("doctor", env=no_secret, cwd=tmp_path)
    assert done.returncode == 2, explain(done)
    assert "HIDREAM_CALLBACK_SECRET is not set" in lines(done)["callback"]

    gone = hidream_env(
        sandbox,
        tmp_path / "out",
        HIDREAM_CALLBACK_URL=f"http://127.0.0.1:{free_port()}",
        HIDREAM_CALLBACK_SECRET=SECRET,
    )
    done = modelset("doctor", env=gone, cwd=tmp_path)
    assert done.returncode == 2, explain(done)
    assert "does not answer" in lines(done)["callback"]
