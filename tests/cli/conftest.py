"""Fixtures for driving `tarscli` against the real control plane."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from typer.testing import Result

from tests.harness.cli import Cli, invoke
from tests.harness.credentials import kubeconfig_document, write_kubeconfig
from tests.harness.tools import git_init


@pytest.fixture
def cli(kubeconfig: Path, namespace: str) -> Cli:
    """`tarscli ARGS --kubeconfig K -n NS` in the test's namespace (another kubeconfig on request)."""

    def run(*args: str, kubeconfig: Path | None = kubeconfig) -> Result:
        return invoke(*args, "--kubeconfig", str(kubeconfig), "-n", namespace)

    return run


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small git project with sources and tests; the current directory during the test."""
    root = tmp_path / "demo-project"
    (root / "src" / "calc").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "src" / "calc" / "__init__.py").write_text("")
    (root / "src" / "calc" / "ops.py").write_text("def add(a, b):\n    return a + b\n")
    (root / "tests" / "test_ops.py").write_text(
        "from calc.ops import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
    )
    (root / "README.md").write_text("calc\n")
    git_init(root)
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def service_account_kubeconfig(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str, tmp_path: Path
) -> Callable[[str], Path]:
    """A kubeconfig for a new ServiceAccount of the namespace, with a real token and no rights."""
    core = client.CoreV1Api(api_client)
    admin = yaml.safe_load(kubeconfig.read_text())

    def make(name: str) -> Path:
        core.create_namespaced_service_account(
            namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
        )
        issued = core.create_namespaced_service_account_token(
            name,
            namespace,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
            ),
        ).status
        assert issued is not None
        cluster = admin["clusters"][0]["cluster"]
        path = tmp_path / f"{name}.kubeconfig"
        write_kubeconfig(
            path,
            kubeconfig_document(
                cluster,
                name,
                {"token": issued.token},
                cluster_name="c",
                context_name="c",
                namespace=namespace,
            ),
        )
        return path

    return make
