"""``modelset labels``: what labels images carry, and whether their C2PA manifests
validate: a team's audit before publishing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from modelset._exceptions import ExitCode
from modelset.cli.common import console, errors

if TYPE_CHECKING:
    from modelset.labels.read import ImageLabels

REMOTE_SCHEMES = ("s3://", "gs://", "az://")


def labels(
    images: Annotated[
        list[str], typer.Argument(help="Image files, or s3://, gs://, az:// object URLs.")
    ],
    trust: Annotated[
        Path | None,
        typer.Option(help="PEM certificates to trust: a manifest signed under one is Trusted."),
    ] = None,
) -> None:
    """Print the labels each image carries: the IPTC digital source type, the TC260 AIGC
    record, and whether its C2PA manifest validates. Exit code 1 when an image lacks
    either XMP label or its manifest does not validate, 2 when one cannot be read."""
    from modelset.labels import LabelError
    from modelset.labels.read import image_labels
    from modelset.storage import StorageError

    anchors = trust.read_text() if trust is not None else None
    complete = True
    for name in images:
        try:
            found = image_labels(_read(name), anchors)
        except (OSError, StorageError, LabelError) as exc:
            errors.print(f"[bold red]error:[/] {name}: {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(ExitCode.USAGE) from None
        complete = _show(name, found) and complete
    raise typer.Exit(ExitCode.OK if complete else ExitCode.ITEMS_FAILED)


def _read(name: str) -> bytes:
    if name.startswith(REMOTE_SCHEMES):
        from modelset.storage import open_store

        location, _, key = name.rpartition("/")
        return open_store(location).read(key).data
    return Path(name).read_bytes()


def _show(name: str, found: ImageLabels) -> bool:
    """Print one image's labels; whether it carries both XMP labels and no manifest that
    fails to validate."""
    check = found.c2pa
    if check.state is None:
        manifest = "none"
    else:
        actions = [action["action"] for action in check.actions()]
        manifest = f"{check.state} ({', '.join(actions)})"
        if check.failures:
            manifest += f"; failed: {', '.join(check.failures)}"
    missing = "[bold red]missing[/]"
    lines = [
        f"[bold]{escape(name)}[/] ({found.mime})",
        f"  digital source type: {escape(found.xmp.digital_source_type or '') or missing}",
        f"  TC260 AIGC: {escape(found.xmp.aigc_text or '') or missing}",
        f"  C2PA: {escape(manifest)}",
    ]
    console.print("\n".join(lines), highlight=False, soft_wrap=True)
    labelled = found.xmp.digital_source_type is not None and found.xmp.aigc is not None
    return labelled and (check.state is None or check.validates)
