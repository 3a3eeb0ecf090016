"""``modelset sandbox``: the local HiDream sandbox, served in the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from modelset._exceptions import ExitCode
from modelset.cli.common import fail


def sandbox(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8765,
    token: Annotated[str, typer.Option(help="The token clients must send.")] = "sandbox-token",  # noqa: S107
    latency_ms: Annotated[int, typer.Option(help="Added to every API call.")] = 200,
    generation_s: Annotated[float, typer.Option(help="Seconds until a set is final.")] = 2.0,
    images_per_set: Annotated[int, typer.Option(help="Images in every set.")] = 4,
    image_format: Annotated[
        Literal["JPEG", "PNG", "WEBP"], typer.Option(help="Format of the generated images.")
    ] = "JPEG",
    upstream_label: Annotated[
        str | None,
        typer.Option(
            help="Hand out images already labelled (TC260 AIGC record) by this producer, "
            "as an upstream that labels its own images."
        ),
    ] = None,
    faults: Annotated[
        str,
        typer.Option(
            help="Fault rates, e.g. "
            '"throttle=0.1,server_error=0.05,no_credits=0,stall=0,fail=0,reject=0"; also '
            "lost_answer, malformed, unknown_status, expire, callback_dup, callback_early "
            "(docs/sandbox.md).",
        ),
    ] = "",
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible faults.")] = None,
    state: Annotated[
        Path | None, typer.Option("--state", help="Keep tasks across restarts in this file.")
    ] = None,
    request_id_lookup: Annotated[
        bool,
        typer.Option(
            "--request-id-lookup/--no-request-id-lookup",
            help="Find tasks by request_id in result queries (the public docs promise "
            "task_id only, so by default a request_id alone answers 'task not found').",
        ),
    ] = False,
) -> None:
    """Run the local HiDream sandbox (the upstream contract, with latency and faults)."""
    from modelset.sandbox import SandboxConfig, parse_faults, serve

    try:
        parsed = parse_faults(faults)
    except ValueError as exc:
        fail(f"--faults: {exc}", ExitCode.USAGE)
    serve(
        SandboxConfig(
            host=host,
            port=port,
            token=token,
            latency_ms=latency_ms,
            generation_s=generation_s,
            images_per_set=images_per_set,
            image_format=image_format,
            upstream_label=upstream_label,
            faults=parsed,
            seed=seed,
            state_file=state,
            lookup_by_request_id=request_id_lookup,
        )
    )
