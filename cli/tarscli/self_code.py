"""`tarscli self-code`: SelfCodingRun objects in a cluster — setup, start, status, stop."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Improve a codebase with the self-coding workflow: set up the replicas, start, follow and stop runs.",
    no_args_is_help=True,
)
