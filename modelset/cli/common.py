"""What every command shares: its consoles, and one line with the right exit code for
an error a person can act on (the codes: :mod:`modelset._exceptions`)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import httpx
import typer
from rich.console import Console

from modelset._exceptions import ExitCode, UsageError
from modelset.hidream import AccountError, HiDreamClient, HiDreamError
from modelset.settings import Settings
from modelset.storage import StorageError

console = Console()
errors = Console(stderr=True)

T = TypeVar("T")

PREFECT_UNREACHABLE = "Failed to reach API"  # how Prefect's client says it


def fail(message: str, code: ExitCode) -> NoReturn:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn the errors a person can act on into one line and the right exit code."""
    try:
        yield
    except UsageError as exc:
        fail(str(exc), ExitCode.USAGE)
    except AccountError as exc:
        fail(exc.message, ExitCode.ACCOUNT)
    except HiDreamError as exc:
        fail(exc.message, ExitCode.ITEMS_FAILED)
    except StorageError as exc:
        fail(
            f"the output location failed: {exc}. Nothing paid for is lost: every set sent "
            "is in the ledger, or found again by its request_id. Run the same command again "
            "to finish; sets this run still held are taken over at once from this machine, "
            "from another one once their lease (HIDREAM_LEDGER_LEASE) runs out",
            ExitCode.ITEMS_FAILED,
        )
    except httpx.TransportError as exc:  # the HiDream client raises its own errors
        fail(prefect_unreachable(f"{type(exc).__name__}: {exc}"), ExitCode.ITEMS_FAILED)
    except RuntimeError as exc:
        if not str(exc).startswith(PREFECT_UNREACHABLE):
            raise
        fail(prefect_unreachable(str(exc)), ExitCode.ITEMS_FAILED)


def prefect_unreachable(detail: str) -> str:
    return (
        f"the Prefect server did not answer ({detail}). Nothing paid for is lost: the "
        "ledger in the output location, not Prefect, records what was sent. Check "
        "PREFECT_API_URL (`modelset doctor`), then run the same command again"
    )


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    with reported_errors():
        return asyncio.run(coroutine)


async def client_from_environment() -> HiDreamClient:
    from modelset.tasks.credentials import client_from_settings

    return await client_from_settings(Settings())
