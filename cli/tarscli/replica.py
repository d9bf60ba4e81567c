"""`tarscli replica`: manage the TarsReplica objects that serve the four roles."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Manage role replicas (TarsReplica objects): list, create, start, stop, remove, status.",
    no_args_is_help=True,
)
