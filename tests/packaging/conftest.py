"""Fixtures for the chart's tests: the pinned helm binary and the chart rendered with values."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.harness import controlplane
from tests.harness.chart import CHART, Helm, Manifest, Render, Template, documents
from tests.harness.tools import run_tool

HELM_TIMEOUT_SECONDS = 120


@pytest.fixture(scope="session")
def helm(
    control_plane: controlplane.ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Helm:
    """The helm built by `make tools`, with its own config/cache/data dirs and the control plane's kubeconfig."""
    home = tmp_path_factory.mktemp("helm-home")
    environment = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(control_plane.kubeconfig),
    }

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(control_plane.tools_dir / "helm"), *args]
        return run_tool(command, check=check, env=environment, timeout=HELM_TIMEOUT_SECONDS)

    return run


@pytest.fixture(scope="session")
def template(helm: Helm) -> Template:
    """`helm template` of the chart with `--set` settings: the YAML text (CRDs not included)."""

    def run(*settings: str, namespace: str = "tars", release: str = "tars") -> str:
        arguments = [argument for setting in settings for argument in ("--set", setting)]
        return helm("template", release, str(CHART), "--namespace", namespace, *arguments).stdout

    return run


@pytest.fixture(scope="session")
def render(template: Template) -> Render:
    """`helm template`, parsed; a key repeated in a mapping fails the test."""

    def run(*settings: str, namespace: str = "tars", release: str = "tars") -> list[Manifest]:
        return documents(template(*settings, namespace=namespace, release=release))

    return run


@pytest.fixture
def other_namespace(namespace: str, kubectl: Callable[..., Any]) -> Iterator[str]:
    """A second fresh namespace, for what must stay out of reach."""
    name = f"{namespace[:50]}-other"
    kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false", check=False)
