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


class Render(Protocol):
    def __call__(
        self, *settings: str, namespace: str = "tars", release: str = "tars"
    ) -> list[Manifest]: ...


def documents(text: str) -> list[Manifest]:
    return [document for document in yaml.safe_load_all(text) if document]


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
