"""Rendering for `-o table|json|yaml`: rich tables for people, plain JSON and YAML for tools."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import typer
import yaml
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text
from tars_api.meta import API_VERSION, ApiObject

# Wide enough that tables are not squeezed when the output is a pipe or a file.
_NON_TERMINAL_WIDTH = 200


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


class DocumentFormat(enum.StrEnum):
    """For what has no table: a replica's answer, an OpenAPI document."""

    json = "json"
    yaml = "yaml"


def console(*, stderr: bool = False) -> Console:
    """A console on the current stdout/stderr (CliRunner swaps them), wide when not a terminal."""
    probe = Console(stderr=stderr)
    return Console(
        stderr=stderr, width=None if probe.is_terminal else _NON_TERMINAL_WIDTH, highlight=False
    )


def manifest(obj: ApiObject) -> dict[str, Any]:
    """The object as the API holds it, status included."""
    return obj.to_k8s(include_status=True)


def document(objects: ApiObject | Sequence[ApiObject], kind: type[ApiObject]) -> dict[str, Any]:
    """One object's manifest, or a `<Kind>List` of several, as kubectl prints them."""
    if isinstance(objects, ApiObject):
        return manifest(objects)
    return {
        "apiVersion": API_VERSION,
        "kind": kind.resource.list_kind,
        "items": [manifest(obj) for obj in objects],
    }


def print_document(data: Any, output: OutputFormat | DocumentFormat) -> None:
    """Print `data` as JSON or YAML, unstyled so it can be piped."""
    if output == OutputFormat.json:
        typer.echo(json.dumps(data, indent=2))
    elif output == OutputFormat.yaml:
        typer.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n"))
    else:
        raise ValueError(f"{output} is not a document format")


def age(timestamp: datetime | None, *, now: datetime | None = None) -> str:
    """kubectl's short age: 45s, 12m, 5h, 3d."""
    if timestamp is None:
        return "<unknown>"
    seconds = max(0, int(((now or datetime.now(UTC)) - timestamp).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size or (unit == "m" and seconds >= size):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def timestamp(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "-"


def text(value: Any) -> str:
    """A table cell: `-` for nothing, the value's own text otherwise (enums by value)."""
    if value is None or value == "":
        return "-"
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


def table(*columns: str, title: str | None = None) -> Table:
    """A borderless table in the style of `kubectl get`."""
    grid = Table(title=title, box=None, header_style="bold", pad_edge=False, title_justify="left")
    for column in columns:
        grid.add_column(column, overflow="fold")
    return grid


def summary(rows: Sequence[tuple[str, str]]) -> Table:
    """Label and value pairs, labels bold, in the style of `kubectl describe`."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for label, value in rows:
        # Values are data (messages, paths, `pip install .[test]`), never rich markup.
        grid.add_row(label, Text(value))
    return grid


def sections(*parts: RenderableType) -> Group:
    """Renderables one after another, a blank line between them."""
    spaced: list[RenderableType] = []
    for part in parts:
        if spaced:
            spaced.append(Text(""))
        spaced.append(part)
    return Group(*spaced)
