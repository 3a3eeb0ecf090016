"""The commands of the deployments' side: ``modelset serve``, ``modelset callbacks`` and
``modelset notify-upload``; each needs a Prefect server or the callback secret."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from modelset._exceptions import ExitCode
from modelset.cli.common import console, fail, reported_errors
from modelset.settings import Settings


def serve() -> None:
    """Serve every deployment of prefect.yaml from this process (no work pool needed)."""
    if not os.environ.get("PREFECT_API_URL"):
        fail("modelset serve needs a Prefect server: set PREFECT_API_URL", ExitCode.USAGE)
    from modelset.deployments.serve import serve_all

    with reported_errors():
        serve_all()


def callbacks(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8780,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Run the HiDream callback receiver (POST /hidream/callback/{secret})."""
    settings = Settings()
    if settings.callback_secret is None or not settings.callback_secret.get_secret_value():
        fail("the receiver needs HIDREAM_CALLBACK_SECRET", ExitCode.USAGE)
    from modelset.deployments.callbacks import serve_receiver

    serve_receiver(host, port, settings)


def notify_upload(
    source: Annotated[str, typer.Argument(help="The uploaded photo: a path or URL.")],
    template: Annotated[
        list[int], typer.Option("--template", "-t", help="Template id; repeat for several.")
    ],
    item: Annotated[str | None, typer.Option(help="Name for the outputs, e.g. a SKU.")] = None,
) -> None:
    """Announce an uploaded photo: emits modelset.photo.uploaded for the on-upload deployment."""
    if not os.environ.get("PREFECT_API_URL"):
        fail("notify-upload needs a Prefect server: set PREFECT_API_URL", ExitCode.USAGE)
    from modelset.deployments.uploads import emit_upload

    try:
        event_id = emit_upload(source, template, item)
    except FileNotFoundError as exc:
        fail(str(exc), ExitCode.USAGE)
    console.print(f"emitted modelset.photo.uploaded ({event_id})")
