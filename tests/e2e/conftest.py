"""End to end: the real control plane, the pod runner playing the kubelet, the operator as a
subprocess, replica pods that are real `tars-replica serve` processes, and `tarscli`.

One namespace with the four role replicas (`tarscli self-code setup`) serves the tests
of a module; tests that change the replicas get a namespace of their own.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from tars_operator.config import ENV_PREFIX

from tests.harness.e2e import SAMPLE_PROJECT, SETUP_TIMEOUT_SECONDS, Workspace
from tests.harness.ollama import TEST_MODEL, OllamaServer
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


@contextmanager
def operated_namespace(
    kubeconfig: Path,
    kubectl: Callable[..., Any],
    prefix: str,
    log_dir: Path,
    operator_environment: Mapping[str, str] | None = None,
) -> Iterator[Workspace]:
    """A fresh namespace with an operator watching it; both gone afterwards."""
    namespace = _create_namespace(kubectl, prefix)
    operator = OperatorProcess(kubeconfig, namespace, log_dir, operator_environment)
    operator.start()
    try:
        yield Workspace(kubeconfig, namespace, operator)
    finally:
        operator.stop()
        print(f"--- {operator.log_path}\n{operator.log()}")
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def workspace(
    kubeconfig: Path,
    kubectl: Callable[..., Any],
    tars_crds: list[str],
    pod_runner: object,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Workspace]:
    """A namespace prepared by `tarscli self-code setup` (which waits until the replicas are Ready)."""
    with operated_namespace(
        kubeconfig, kubectl, "e2e", tmp_path_factory.mktemp("operator")
    ) as workspace:
        workspace.tarscli("self-code", "setup", "--timeout", SETUP_TIMEOUT_SECONDS)
        yield workspace


@pytest.fixture
def bare_workspace(
    kubeconfig: Path,
    kubectl: Callable[..., Any],
    tars_crds: list[str],
    pod_runner: object,
    tmp_path: Path,
) -> Iterator[Workspace]:
    """A namespace with only the operator: no replicas."""
    with operated_namespace(kubeconfig, kubectl, "e2e-bare", tmp_path) as workspace:
        yield workspace


@pytest.fixture
def ollama_workspace(
    kubeconfig: Path,
    kubectl: Callable[..., Any],
    tars_crds: list[str],
    pod_runner: object,
    ollama_server: OllamaServer,
    tmp_path: Path,
) -> Iterator[Workspace]:
    """A namespace whose operator points the replicas at the real Ollama and its test model
    (the server listens on loopback, which the pod runner's replica processes share)."""
    environment = {
        f"{ENV_PREFIX}OLLAMA_HOST": ollama_server.url,
        f"{ENV_PREFIX}MODEL": TEST_MODEL,
    }
    with operated_namespace(kubeconfig, kubectl, "e2e-model", tmp_path, environment) as workspace:
        yield workspace


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
