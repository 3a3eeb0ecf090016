"""The template catalogue check that runs before anything is paid for."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from modelset.catalogue import recently_fetched
from modelset.hidream import HiDreamClient
from modelset.tasks.results import results_storage


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


async def template_ids(client: HiDreamClient, *, results_in: str) -> list[int]:
    """The template ids the service offers; the cached catalogue is kept in the output
    location ``results_in`` (shared by every worker). A catalogue this process fetched
    minutes ago (``modelset run`` checks before the flow) is used as it is."""
    if (known := recently_fetched(client.base_url)) is not None:
        return known
    lookup = template_catalogue.with_options(result_storage=await results_storage(results_in))
    return await lookup(client)
