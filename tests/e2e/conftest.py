"""End to end: the real control plane, the pod runner playing the kubelet, the operator as a
subprocess, replica pods that are real `tars-replica serve` processes, and `tarscli`.

One namespace with the four role replicas (`tarscli self-code setup`) serves the tests
of a module; tests that change the replicas get a namespace of their own.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.e2e import SAMPLE_PROJECT, SETUP_TIMEOUT_SECONDS, Workspace
from tests.harness.operator_process import OperatorProcess, wait_for
from tests.harness.tools import git_init


def _create_namespace(kubectl: Callable[..., Any], prefix: str) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    kubectl("create", "namespace", name)
    wait_for(
        lambda: (
            kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0
        ),
        f"the default ServiceAccount of {name}",
    )
    return name


@pytest.fixture(scope="module")
def workspace(
    kubeconfig: Path,
    kubectl: Callable[..., Any],
    tars_crds: list[str],
    pod_runner: object,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Workspace]:
    """A namespace prepared by `tarscli self-code setup` (which waits until the replicas are Ready)."""
    namespace = _create_namespace(kubectl, "e2e")
    operator = OperatorProcess(kubeconfig, namespace, tmp_path_factory.mktemp("operator"))
    operator.start()
    workspace = Workspace(kubeconfig, namespace, operator)
    try:
        workspace.tarscli("self-code", "setup", "--timeout", SETUP_TIMEOUT_SECONDS)
        yield workspace
    finally:
        operator.stop()
        print(f"--- {operator.log_path}\n{operator.log()}")
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture
def bare_workspace(
    kubeconfig: Path,
    kubectl: Callable[..., Any],
    tars_crds: list[str],
    pod_runner: object,
    tmp_path: Path,
) -> Iterator[Workspace]:
    """A namespace with only the operator: no replicas."""
    namespace = _create_namespace(kubectl, "e2e-bare")
    operator = OperatorProcess(kubeconfig, namespace, tmp_path)
    operator.start()
    try:
        yield Workspace(kubeconfig, namespace, operator)
    finally:
        operator.stop()
        print(f"--- {operator.log_path}\n{operator.log()}")
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture
def sample_project(tmp_path: Path) -> Path:
    """examples/sample-project copied into a fresh git repository."""
    root = tmp_path / "sample-project"
    shutil.copytree(
        SAMPLE_PROJECT,
        root,
        ignore=shutil.ignore_patterns(".ruff_cache", "__pycache__", ".pytest_cache"),
    )
    return git_init(root, "sample project")
