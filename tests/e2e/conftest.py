"""End to end on real pods: a cluster with a real node (`container_node`), the operator as a
subprocess, the role replicas as containers from the replica image (`make images`), `tarscli`.

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
from tests.harness.kubectl import Kubectl
from tests.harness.node import ContainerNode
from tests.harness.ollama import TEST_MODEL, OllamaServer
from tests.harness.operator_process import OperatorProcess, wait_for
from tests.harness.tools import git_init


def create_namespace(kubectl: Callable[..., Any], prefix: str) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    kubectl("create", "namespace", name)
    wait_for(
        lambda: (
            kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0
        ),
        f"the default ServiceAccount of {name}",
    )
    return name


def replica_pods_environment(replica_image: str) -> dict[str, str]:
    """The operator's settings for replicas from REPLICA_IMAGE, which is on the node already:
    no registry is reachable to pull it from."""
    return {f"{ENV_PREFIX}IMAGE": replica_image, f"{ENV_PREFIX}IMAGE_PULL_POLICY": "Never"}


@contextmanager
def operated_namespace(
    kubeconfig: Path,
    kubectl: Callable[..., Any],
    prefix: str,
    log_dir: Path,
    operator_environment: Mapping[str, str] | None = None,
) -> Iterator[Workspace]:
    """A fresh namespace with an operator watching it; both gone afterwards."""
    namespace = create_namespace(kubectl, prefix)
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
    container_node: ContainerNode,
    node_kubectl: Kubectl,
    node_crds: list[str],
    replica_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Workspace]:
    """A namespace prepared by `tarscli self-code setup` (which waits until the replicas are
    Ready), its replicas real containers."""
    with operated_namespace(
        container_node.plane.kubeconfig,
        node_kubectl,
        "e2e",
        tmp_path_factory.mktemp("operator"),
        replica_pods_environment(replica_image),
    ) as workspace:
        workspace.tarscli("self-code", "setup", "--timeout", SETUP_TIMEOUT_SECONDS)
        yield workspace


@pytest.fixture
def bare_workspace(
    container_node: ContainerNode, node_kubectl: Kubectl, node_crds: list[str], tmp_path: Path
) -> Iterator[Workspace]:
    """A namespace with only the operator: no replicas."""
    with operated_namespace(
        container_node.plane.kubeconfig, node_kubectl, "e2e-bare", tmp_path
    ) as workspace:
        yield workspace


@pytest.fixture
def ollama_workspace(
    container_node: ContainerNode,
    node_kubectl: Kubectl,
    node_crds: list[str],
    replica_image: str,
    node_ollama_server: OllamaServer,
    tmp_path: Path,
) -> Iterator[Workspace]:
    """A namespace whose operator points the replicas at the real Ollama and its test model,
    served on the node's address (pods reach it there; no DNS name resolves in them)."""
    environment = {
        **replica_pods_environment(replica_image),
        f"{ENV_PREFIX}OLLAMA_HOST": node_ollama_server.url,
        f"{ENV_PREFIX}MODEL": TEST_MODEL,
    }
    with operated_namespace(
        container_node.plane.kubeconfig, node_kubectl, "e2e-model", tmp_path, environment
    ) as workspace:
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
