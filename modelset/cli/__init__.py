"""The ``modelset`` command: one module per command (or group), registered here in the
order ``modelset --help`` lists them.

Exit codes, the same for every command: :mod:`modelset._exceptions`. Prefect is imported
only by the commands that orchestrate, so the others start fast.
"""

from __future__ import annotations

import atexit

import typer

from modelset.cli import demo, deployments, doctor, labels, review, run, sandbox, service, settle
from modelset.memory import limit_malloc_arenas

app = typer.Typer(
    name="modelset",
    help="Turn model photos into HiDream model image sets, exactly once, with Prefect.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.command()(run.run)
app.command()(review.review)
app.command()(settle.settle)
app.command()(service.status)
app.command()(service.templates)
app.command()(doctor.doctor)
app.command()(labels.labels)
app.command()(demo.demo)
app.command()(deployments.serve)
app.command("notify-upload")(deployments.notify_upload)
app.command()(deployments.callbacks)
app.command()(sandbox.sandbox)


def main() -> None:
    """The ``modelset`` command (``python -m modelset`` too)."""
    atexit.register(run.end_without_teardown)  # the first registered: it runs last
    limit_malloc_arenas()  # before the threads that import Prefect and hash the photos
    app(prog_name="modelset")
