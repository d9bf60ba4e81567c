"""The `tarscli` root: command groups and the console-script entry point.

Groups (each a module of tarscli.commands):
- `self-code`: runs of the self-coding workflow. In a cluster: `setup`, `start`,
  `status`, `stop`, `diff`, `apply` (commands.self_code). On this machine: `run`,
  `improve`, `status --local` and `stop --local` (commands.local, which
  commands.self_code adds to its group).
- `replica`: the TarsReplica objects that serve the four roles, and requests to their
  APIs (commands.replica).
- `demo`: demonstrations, on this machine, in kind or in a cluster (commands.demo).
"""

from __future__ import annotations

import importlib
from typing import Annotated, Final

import typer
from typer import _click
from typer.main import get_group_from_info
from typer.models import TyperInfo

from tarscli.errors import TarsGroup
from tarscli.help_style import TarsTyper

DISTRIBUTION = "tars-selfcoding"
MARKUP_MODE: Final = "markdown"
# Each group's module, imported only when a command of that group runs or help lists the
# groups: a command then loads what it needs and not the rest of the CLI.
GROUP_MODULES = {
    "self-code": "tarscli.commands.self_code",
    "replica": "tarscli.commands.replica",
    "demo": "tarscli.commands.demo",
}


class LazyRoot(TarsGroup):
    """The root command: its groups are built from their modules when first asked for."""

    def list_commands(self, ctx: _click.Context) -> list[str]:
        return [*GROUP_MODULES, *super().list_commands(ctx)]

    def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
        if cmd_name not in GROUP_MODULES:
            return super().get_command(ctx, cmd_name)
        if cmd_name not in self.commands:
            group_app = importlib.import_module(GROUP_MODULES[cmd_name]).app
            self.commands[cmd_name] = get_group_from_info(
                TyperInfo(group_app, name=cmd_name),
                pretty_exceptions_short=app.pretty_exceptions_short,
                suggest_commands=app.suggest_commands,
                rich_markup_mode=MARKUP_MODE,
            )
        return self.commands[cmd_name]


app = TarsTyper(
    name="tarscli",
    cls=LazyRoot,
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
    rich_markup_mode=MARKUP_MODE,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(requested: bool) -> None:
    if requested:
        from importlib.metadata import version

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
