"""End to end: the real control plane, the pod runner playing the kubelet, the operator as a
subprocess, replica pods that are real `tars-replica serve` processes, and `tarscli`.

One namespace with the four role replicas (`tarscli self-code setup`) serves the tests
of a module; tests that change the replicas get a namespace of their own.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cluster_support import REPOSITORY
from operator_helpers import OperatorProcess, wait_for

TARSCLI = Path(sys.executable).parent / "tarscli"
SAMPLE_PROJECT = REPOSITORY / "examples" / "sample-project"
COMMAND_TIMEOUT_SECONDS = 300
SETUP_TIMEOUT_SECONDS = "180"


@dataclass
class Workspace:
    """A namespace with an operator watching it, and `tarscli` bound to both."""

    kubeconfig: Path
    namespace: str
    operator: OperatorProcess

    def tarscli(
        self, *args: str, cwd: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = [str(TARSCLI), *args, "--kubeconfig", str(self.kubeconfig), "-n", self.namespace]
        result = subprocess.run(
            command,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            env={**os.environ, "COLUMNS": "200"},
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
            )
        return result

    def kubectl_json(self, kubectl: Callable[..., Any], *args: str) -> Any:
        return json.loads(kubectl("get", *args, "-n", self.namespace, "-o", "json").stdout)


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


def git(root: Path, *arguments: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=e2e@example.com", "-c", "user.name=e2e", *arguments],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.fixture
def sample_project(tmp_path: Path) -> Path:
    """examples/sample-project copied into a fresh git repository."""
    root = tmp_path / "sample-project"
    shutil.copytree(
        SAMPLE_PROJECT,
        root,
        ignore=shutil.ignore_patterns(".ruff_cache", "__pycache__", ".pytest_cache"),
    )
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "sample project")
    return root
