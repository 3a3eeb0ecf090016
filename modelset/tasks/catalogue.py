"""The template catalogue check that runs before anything is paid for."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from modelset.errors import UsageError
from modelset.hidream import HiDreamClient
from modelset.tasks.results import results_storage


class UnknownTemplates(UsageError):
    """Template ids the catalogue does not list: a usage error, nothing is paid."""

    def __init__(self, unknown: list[int], known: list[int]) -> None:
        super().__init__(
            f"unknown template id(s) {', '.join(map(str, unknown))}; the catalogue has "
            f"{', '.join(map(str, known[:30]))}{' ...' if len(known) > 30 else ''} "
            "(modelset templates lists them)"
        )
        self.unknown = unknown


def _catalogue_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    client: HiDreamClient = parameters["client"]
    return f"modelset-template-catalogue:{client.base_url}"


@task(
    name="template-catalogue",
    cache_key_fn=_catalogue_key,
    cache_expiration=timedelta(hours=1),
)
async def template_catalogue(client: HiDreamClient) -> list[int]:
    """Every template id the service offers (cached for an hour per upstream)."""
    return sorted(template.id for template in await client.list_templates())


async def check_templates(
    client: HiDreamClient, template_ids: list[int], *, results_in: str | None = None
) -> None:
    """Refuse template ids the catalogue does not list; the cached catalogue is kept in
    the output location ``results_in`` when given (shared by every worker)."""
    lookup = template_catalogue
    if results_in is not None:
        lookup = lookup.with_options(result_storage=await results_storage(results_in))
    known = await lookup(client)
    unknown = sorted(set(template_ids) - set(known))
    if unknown:
        raise UnknownTemplates(unknown, known)
