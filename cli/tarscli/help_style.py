"""Help that reads like kubectl's: `--timeout SECONDS`, `RUN`, and nothing after a flag.

Typer's rich help prints a type beside every parameter (`<bool>`, `<str>`, `<int range>`),
flags, arguments and `--help` included. The command and group classes here show an
option's metavar instead (tarscli.options names them; an option without one shows its
name in capitals), nothing beside a flag, which takes no value, and nothing beside an
argument, whose name already says what it is. `TarsTyper` makes every group and command
of the CLI with these classes, so a command added later reads the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from typer import _click
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption
from typer.models import CommandFunctionType


class MetavarOption(TyperOption):
    """An option whose help shows what it takes (`SECONDS`), and nothing for a flag."""

    def display_type_rich(self, ctx: _click.Context) -> str | None:
        if self.is_flag:
            return None
        return self.metavar or (self.name or "value").upper()


class UntypedArgument(TyperArgument):
    """An argument whose help shows its name (`RUN`) and no type beside it."""

    def display_type_rich(self, ctx: _click.Context) -> str | None:
        return None


def kubectl_style(params: list[_click.Parameter]) -> list[_click.Parameter]:
    """The same parameters, each displayed the kubectl way; parsing is unchanged."""
    for param in params:
        # Typer builds the parameters (and click the help option) itself and offers no
        # setting for their class; the subclasses only change how help displays them.
        if type(param) is TyperOption:
            param.__class__ = MetavarOption
        elif type(param) is TyperArgument:
            param.__class__ = UntypedArgument
    return params


class HelpCommand(TyperCommand):
    def get_params(self, ctx: _click.Context) -> list[_click.Parameter]:
        return kubectl_style(super().get_params(ctx))


class HelpGroup(TyperGroup):
    def get_params(self, ctx: _click.Context) -> list[_click.Parameter]:
        return kubectl_style(super().get_params(ctx))


class TarsTyper(typer.Typer):
    """A typer app whose group and commands use the classes above unless told otherwise."""

    def __init__(self, *, cls: type[TyperGroup] | None = None, **settings: Any) -> None:
        super().__init__(cls=cls or HelpGroup, **settings)

    def command(
        self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **settings: Any
    ) -> Callable[[CommandFunctionType], CommandFunctionType]:
        return super().command(name, cls=cls or HelpCommand, **settings)
