"""The `tarscli` root: command groups and the console-script entry point.

Groups (each a module of tarscli.commands):
- `self-code`: runs of the self-coding workflow. In a cluster: `setup`, `start`,
  `status`, `stop`, `diff`, `apply` (commands.self_code). On this machine: `run`,
  `improve`, `status --local` and `stop --local` (commands.local).
- `replica`: the TarsReplica objects that serve the four roles (commands.replica).
- `demo`: demonstrations, on this machine, in kind or in a cluster (commands.demo).
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Annotated

import typer

from tarscli.commands import demo, local, replica, self_code
from tarscli.errors import TarsGroup
from tarscli.help_style import TarsTyper

DISTRIBUTION = "tars-selfcoding"

app = TarsTyper(
    name="tarscli",
    cls=TarsGroup,
    help=(
        "TARS Self-Coding: analyzer, generator, tester and coordinator replicas that improve "
        "a codebase and prove every change with its own tests.\n\n"
        "On this machine, no cluster needed: `tarscli demo self-code-demo`, or "
        "`tarscli self-code run -t DIR` on your own project.\n\n"
        "In a cluster (the current kube-context): `tarscli self-code setup`, then "
        "`tarscli self-code start -t DIR` and `tarscli self-code status --watch`."
    ),
    no_args_is_help=True,
    # Markdown joins the lines of a docstring paragraph, so help reflows to the terminal.
    rich_markup_mode="markdown",
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

self_code.app.command("run")(local.run)
self_code.app.command("improve")(local.improve)

app.add_typer(self_code.app, name="self-code")
app.add_typer(replica.app, name="replica")
app.add_typer(demo.app, name="demo")


def _print_version(requested: bool) -> None:
    if requested:
        typer.echo(f"tarscli {version(DISTRIBUTION)}")
        raise typer.Exit()


@app.callback()
def root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """The commands below; `tarscli COMMAND --help` explains each."""


def main() -> None:
    """Console-script entry point (`tarscli`)."""
    app(prog_name="tarscli")


if __name__ == "__main__":
    main()
