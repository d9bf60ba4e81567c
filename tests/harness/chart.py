"""Helpers for the chart's tests: the helm runner's shape and lookups in rendered manifests."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Protocol

import yaml

REPOSITORY = Path(__file__).resolve().parents[2]
CHART = REPOSITORY / "charts" / "tars"

Manifest = dict[str, Any]


class Helm(Protocol):
    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]: ...


class Template(Protocol):
    def __call__(self, *settings: str, namespace: str = "tars", release: str = "tars") -> str: ...


class Render(Protocol):
    def __call__(
        self, *settings: str, namespace: str = "tars", release: str = "tars"
    ) -> list[Manifest]: ...


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a mapping with a key twice (parsers disagree on which one wins)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        repeated = sorted({str(key) for key in keys if keys.count(key) > 1})
        if repeated:
            raise yaml.constructor.ConstructorError(
                None, None, f"repeated keys {repeated}", node.start_mark
            )
        return super().construct_mapping(node, deep=deep)


def documents(text: str) -> list[Manifest]:
    return [document for document in yaml.load_all(text, Loader=UniqueKeyLoader) if document]


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        manifest
        for manifest in manifests
        if manifest["kind"] == kind and (name is None or manifest["metadata"]["name"] == name)
    ]


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = find(manifests, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
