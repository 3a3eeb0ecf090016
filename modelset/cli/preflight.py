"""What ``modelset run`` refuses before Prefect is even imported, and the import of
Prefect and the flow started meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
from pathlib import Path

from pydantic import ValidationError

from modelset._exceptions import ExitCode
from modelset.cli.batch import prefect_defaults
from modelset.cli.common import client_from_environment, fail, reported_errors
from modelset.options import RunOptions
from modelset.settings import Settings
from modelset.storage import is_remote


def preflight(
    sources: list[str], template_ids: list[int], options: RunOptions
) -> threading.Thread | None:
    """What can be refused before Prefect is even imported: the output location, a missing
    token, a visible label no font draws, sources that do not exist; then (one catalogue
    request) unknown template ids, while Prefect and the flow are imported in a thread
    (returned, to join): the request and the import each take a good part of a second,
    and a one-photo run waits for both.
    A refused template starts no Prefect server all the same."""
    from modelset.catalogue import check_known, remember
    from modelset.hashing import start_hashing
    from modelset.sources import discover
    from modelset.storage import open_store

    settings = settings_or_exit()
    # A dry run needs no token; a Secret block is read through Prefect, in the flow.
    asks_for_token = not options.dry_run and not settings.api_token_block
    with reported_errors():
        open_store(options.out or settings.output_dir)
        if options.publish_to is not None:
            open_store(options.publish_to)
        if options.visible_label:
            from modelset.labels import find_font

            find_font(options.visible_label, settings.label_font)
        if asks_for_token:
            settings.require_token()
        items = discover(sources, allow_file_urls=settings.allow_file_urls)
        if not asks_for_token:
            return None
        importing = start_importing_the_flow()
        start_hashing(Path(item.source) for item in items if not is_remote(item.source))
        wanted = sorted({t for item in items for t in (item.template_ids or template_ids)})

        async def known() -> list[int]:
            async with await client_from_environment() as client:
                catalogue = sorted(template.id for template in await client.list_templates())
                remember(client.base_url, catalogue)
                return catalogue

        check_known(wanted, asyncio.run(known()))
    return importing


def settings_or_exit() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        name = f"HIDREAM_{str(error['loc'][0]).upper()}: " if error["loc"] else ""
        fail(f"{name}{error['msg']}", ExitCode.USAGE)


def start_importing_the_flow() -> threading.Thread:
    """Import Prefect and the flow (about a second) in a thread, while the run waits on
    the catalogue request; the run imports it when that is done, and gets any import
    error then."""
    prefect_defaults()

    def load() -> None:
        with contextlib.suppress(Exception):
            importlib.import_module("modelset.flows.generate")

    importing = threading.Thread(target=load, name="import-flow", daemon=True)
    importing.start()
    return importing
