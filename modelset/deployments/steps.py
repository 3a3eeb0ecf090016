"""The pull step of ``prefect.yaml``: the folder a deployment's flow runs work in.

```yaml
pull:
  - modelset.deployments.steps.set_working_directory: {}
```

A process worker starts each flow run in a temporary folder that it deletes afterwards,
and imports the flows from the installed ``modelset`` package (the entrypoints are
module paths), so nothing of the worker's own folder is needed. The step moves a run
to a stable folder only when one is named, by its ``directory`` input or by
``MODELSET_WORKING_DIRECTORY`` in the run's environment (the worker's, or the
deployment's ``job_variables.env``). It then sets ``MODELSET_WORKING_DIRECTORY`` to that
folder, which is how the flows know that a relative output location or inbox is safe
there. With neither, the run stays in the temporary folder, and the flows refuse
relative locations instead of writing into a folder about to be deleted.
"""

from __future__ import annotations

import os
from pathlib import Path

from modelset._exceptions import UsageError
from modelset.flows.generate import WORKING_DIRECTORY_SET


def set_working_directory(directory: str | None = None) -> dict[str, str]:
    """Pull step: run the flow in ``directory`` (default: ``$MODELSET_WORKING_DIRECTORY``).

    Returns ``{"directory": <absolute folder>}`` as Prefect's own step does, or ``{}``
    when no folder is named and the run stays where the worker started it.
    """
    chosen = directory or os.environ.get(WORKING_DIRECTORY_SET)
    if not chosen:
        return {}
    return {"directory": str(use_working_directory(chosen))}


def use_working_directory(directory: str | Path) -> Path:
    """Make ``directory`` this process's working directory and announce it to the flows.

    It must be absolute (a relative one would depend on where the worker happened to
    start); it is created if missing.
    """
    path = Path(directory).expanduser()
    if not path.is_absolute():
        raise UsageError(
            f"{WORKING_DIRECTORY_SET} is the relative folder {str(directory)!r}: "
            "name the working directory of deployment runs by an absolute path"
        )
    path.mkdir(parents=True, exist_ok=True)
    os.chdir(path)
    os.environ[WORKING_DIRECTORY_SET] = str(path)
    return path
