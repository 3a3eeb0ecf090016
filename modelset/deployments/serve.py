"""``modelset serve``: every deployment of ``prefect.yaml`` from one process, no work pool.

``prefect.yaml`` is the one description of the deployments: ``prefect deploy --all``
reads it for workers, and this module reads it for a laptop. Prefect leaves a served
deployment's triggers active after ``serve()`` stops (they would pile up Late runs), so
they are paused on the way out.

The entrypoints are module paths (``modelset.flows.generate:generate_model_sets``), so
the flows come from the installed package wherever ``modelset serve`` is started. Served
runs work in serve's folder (or in ``MODELSET_WORKING_DIRECTORY``, if set, which serve
moves to), a stable one: relative output locations are fine there, as for ``modelset run``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import yaml
from prefect import serve
from prefect.client.orchestration import get_client
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger, DeploymentTriggerTypes, TriggerTypes
from prefect.exceptions import ObjectNotFound
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.types.entrypoint import EntrypointType

from modelset.deployments.steps import use_working_directory
from modelset.flows.generate import WORKING_DIRECTORY_SET

PROJECT = Path(__file__).resolve().parents[2]
PREFECT_YAML = PROJECT / "prefect.yaml"


def load_deployments(path: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    """The deployments declared in ``prefect.yaml``, ready to serve."""
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [_runner_deployment(entry) for entry in spec["deployments"]]


def _runner_deployment(entry: dict[str, Any]) -> RunnerDeployment:
    flow: Flow[..., Any] = load_flow_from_entrypoint(entry["entrypoint"])
    schedules = [schedule["cron"] for schedule in entry.get("schedules", [])]
    triggers: list[DeploymentTriggerTypes | TriggerTypes] = [
        DeploymentEventTrigger(**{k: v for k, v in trigger.items() if k != "type"})
        for trigger in entry.get("triggers", [])
    ]
    return RunnerDeployment.from_flow(
        flow,
        entry["name"],
        description=entry.get("description"),
        tags=entry.get("tags"),
        parameters=entry.get("parameters"),
        cron=schedules or None,
        triggers=triggers or None,
        # Recorded as a module path too: not a file path relative to serve's folder.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def serve_all(path: Path = PREFECT_YAML) -> None:
    """Serve every deployment until interrupted, then pause their triggers.

    Served runs work in this process's folder, which outlives them: the flows are told
    so (``MODELSET_WORKING_DIRECTORY``), and accept relative output locations.
    """
    use_working_directory(os.environ.get(WORKING_DIRECTORY_SET) or Path.cwd())
    deployments = load_deployments(path)
    names = [f"{d.flow_name}/{d.name}" for d in deployments]
    for name in asyncio.run(take_from_workers(names)):
        print(f"{name} was deployed to a work pool; serving it here instead")
    try:
        serve(*deployments, pause_on_shutdown=True)
    finally:
        asyncio.run(pause_triggers(names))


async def take_from_workers(deployment_names: list[str]) -> list[str]:
    """Delete same-named deployments that belong to a work pool; returns their names.

    Serving updates a deployment in place but keeps what only a worker deployment has
    (its pull steps among them), which are not the served deployment's; `prefect deploy
    --all` gives them back to the workers.
    """
    taken = []
    async with get_client() as client:
        for name in deployment_names:
            try:
                deployment = await client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            if deployment.work_pool_name:
                await client.delete_deployment(deployment.id)
                taken.append(name)
    return taken


async def pause_triggers(deployment_names: list[str]) -> int:
    """Pause the automations behind these deployments' triggers; returns how many."""
    paused = 0
    async with get_client() as client:
        for name in deployment_names:
            deployment = await client.read_deployment_by_name(name)
            resource = f"prefect.deployment.{deployment.id}"
            for automation in await client.read_resource_related_automations(resource):
                if automation.enabled:
                    await client.pause_automation(automation.id)
                    paused += 1
    return paused
