"""The chart's RBAC, installed for real and asked with `kubectl auth can-i --as` (the real authorizer).

The matrix holds what each service account needs and what it must never get: Secrets
(in any namespace, unless named for git credentials), deleting CRDs or its own
resources, creating pods or exec'ing into them, widening its own rights. A last test
runs the real operator with the operator account's token: the rights are enough.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import controlplane
from tests.harness.chart import REPOSITORY, Manifest, Render, find, one
from tests.harness.credentials import kubeconfig_document, write_kubeconfig
from tests.harness.rbac_matrix import (
    COORDINATOR_CAN,
    COORDINATOR_CANNOT,
    GIT_SECRET,
    OPERATOR_CAN,
    OPERATOR_CANNOT,
    OPERATOR_CONFINED,
    WORKER_CANNOT,
    Check,
    mismatches,
)
from tests.harness.tools import stop_process

RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding"}
SETTLE_SECONDS = 120

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@dataclass(frozen=True)
class Installed:
    namespace: str
    other: str
    operator: str
    coordinator: str
    worker: str
    manifests: list[Manifest]


def can(kubectl: Kubectl, installed: Installed, account: str, check: Check) -> bool:
    location = {
        "home": ["-n", installed.namespace],
        "other": ["-n", installed.other],
        "cluster": ["--all-namespaces"],
    }[check.where]
    arguments = ["auth", "can-i", check.verb, check.resource, *location]
    if check.subresource:
        arguments.append(f"--subresource={check.subresource}")
    result = kubectl(*arguments, check=False, as_user=account)
    answer = result.stdout.strip().split()[:1]
    assert answer in (["yes"], ["no"]), (
        f"kubectl auth can-i said {result.stdout!r} {result.stderr!r}"
    )
    return answer == ["yes"]


@contextmanager
def install_rbac(
    render: Render, kubectl: Kubectl, namespace: str, other: str, *settings: str
) -> Iterator[Installed]:
    """The chart's ServiceAccounts, Roles and bindings, applied for real under a fresh release name."""
    release = f"rbac-{secrets.token_hex(3)}"
    manifests = [
        manifest
        for manifest in render(*settings, namespace=namespace, release=release)
        if manifest["kind"] in RBAC_KINDS
    ]
    text = yaml.safe_dump_all(manifests)
    kubectl("apply", "-f", "-", input=text)
    operator_account = one(manifests, "ServiceAccount", f"{release}-tars")["metadata"]["name"]
    try:
        yield Installed(
            namespace=namespace,
            other=other,
            operator=f"system:serviceaccount:{namespace}:{operator_account}",
            coordinator=f"system:serviceaccount:{namespace}:tars-coordinator",
            worker=f"system:serviceaccount:{namespace}:default",
            manifests=manifests,
        )
    finally:
        for manifest in manifests:
            if manifest["kind"] in CLUSTER_SCOPED:
                kubectl(
                    "delete", manifest["kind"].lower(), manifest["metadata"]["name"], check=False
                )


@pytest.fixture
def namespaced(
    render: Render, kubectl: Kubectl, namespace: str, other_namespace: str, tars_crds: list[str]
) -> Iterator[Installed]:
    # kubectl resolves tarsreplicas.tars.dev through discovery: the CRDs must be served.
    with install_rbac(render, kubectl, namespace, other_namespace) as installed:
        yield installed


@pytest.fixture
def cluster_wide(
    render: Render, kubectl: Kubectl, namespace: str, other_namespace: str, tars_crds: list[str]
) -> Iterator[Installed]:
    with install_rbac(
        render, kubectl, namespace, other_namespace, "rbac.clusterWide=true"
    ) as installed:
        yield installed


@pytest.fixture
def with_git_credentials(
    render: Render, kubectl: Kubectl, namespace: str, other_namespace: str, tars_crds: list[str]
) -> Iterator[Installed]:
    with install_rbac(
        render, kubectl, namespace, other_namespace, f"rbac.gitCredentialSecrets={{{GIT_SECRET}}}"
    ) as installed:
        yield installed


def assert_matrix(
    kubectl: Kubectl, installed: Installed, account: str, allowed: list[Check], denied: list[Check]
) -> None:
    wrong = mismatches(partial(can, kubectl, installed, account), allowed, denied)
    assert not wrong, f"{account}:\n  " + "\n  ".join(wrong)


def test_operator_rights_namespaced(kubectl: Kubectl, namespaced: Installed) -> None:
    assert_matrix(
        kubectl, namespaced, namespaced.operator, OPERATOR_CAN, OPERATOR_CANNOT + OPERATOR_CONFINED
    )


def test_operator_rights_cluster_wide(kubectl: Kubectl, cluster_wide: Installed) -> None:
    everywhere = [
        Check(check.verb, check.resource, check.subresource, where)
        for check in OPERATOR_CAN
        for where in (("home", "other") if check.where == "home" else (check.where,))
    ]
    assert_matrix(kubectl, cluster_wide, cluster_wide.operator, everywhere, OPERATOR_CANNOT)
    operator_roles = [role["metadata"]["name"] for role in find(cluster_wide.manifests, "Role")]
    assert all(name.endswith("-coordinator") for name in operator_roles), operator_roles


def test_coordinator_rights(kubectl: Kubectl, namespaced: Installed) -> None:
    assert_matrix(kubectl, namespaced, namespaced.coordinator, COORDINATOR_CAN, COORDINATOR_CANNOT)


def test_coordinator_rights_in_cluster_wide_mode_stay_namespaced(
    kubectl: Kubectl, cluster_wide: Installed
) -> None:
    assert_matrix(
        kubectl, cluster_wide, cluster_wide.coordinator, COORDINATOR_CAN, COORDINATOR_CANNOT
    )


def test_other_replicas_have_no_rights(kubectl: Kubectl, namespaced: Installed) -> None:
    assert_matrix(kubectl, namespaced, namespaced.worker, [], WORKER_CANNOT)


def test_git_credentials_are_the_only_secret_the_coordinator_reads(
    kubectl: Kubectl, with_git_credentials: Installed
) -> None:
    installed = with_git_credentials
    named = Check("get", f"secrets/{GIT_SECRET}")
    assert can(kubectl, installed, installed.coordinator, named)
    for check in (
        Check("get", "secrets/other-secret"),
        Check("list", "secrets"),
        Check("watch", "secrets"),
        Check("get", f"secrets/{GIT_SECRET}", where="other"),
    ):
        assert not can(kubectl, installed, installed.coordinator, check), str(check)
    assert not can(kubectl, installed, installed.operator, named)
    assert not can(kubectl, installed, installed.worker, named)


# --- the rights are enough: the real operator, with the operator account's token -----------


def wait_for(description: str, probe: Callable[[], Any], log: Path) -> Any:
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(
        f"gave up waiting for {description}; operator log:\n{log.read_text()[-4000:]}"
    )


def get_json(kubectl: Kubectl, namespace: str, *what: str) -> dict[str, Any] | None:
    result = kubectl("get", *what, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def test_operator_works_with_exactly_the_chart_rbac(
    render: Render,
    kubectl: Kubectl,
    control_plane: controlplane.ControlPlane,
    namespace: str,
    other_namespace: str,
    tars_crds: list[str],
    tmp_path: Path,
) -> None:
    with install_rbac(render, kubectl, namespace, other_namespace) as installed:
        account = installed.operator.rsplit(":", 1)[1]
        token = kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
        kubeconfig = tmp_path / "operator-kubeconfig"
        cluster = {
            "server": control_plane.server,
            "certificate-authority": str(control_plane.ca_file),
        }
        write_kubeconfig(
            kubeconfig,
            kubeconfig_document(
                cluster,
                account,
                {"token": token},
                cluster_name="test",
                context_name="operator",
                namespace=namespace,
            ),
        )
        config_map = one(render(namespace=namespace), "ConfigMap", "tars-operator")
        config = tmp_path / "operator.yaml"
        config.write_text(config_map["data"]["operator.yaml"])
        log = tmp_path / "operator.log"
        with log.open("w") as output:
            process = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "tars-operator"),
                    f"--kubeconfig={kubeconfig}",
                    f"--namespace={namespace}",
                    f"--config={config}",
                    "--liveness-port=0",
                    "--metrics-port=0",
                    "--verbose",
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            kubectl(
                "apply", "-n", namespace, "-f", str(REPOSITORY / "examples/replicas/analyzer.yaml")
            )
            wait_for(
                "the operator to apply the analyzer's Deployment and Service",
                lambda: (
                    get_json(kubectl, namespace, "deployment/analyzer")
                    and get_json(kubectl, namespace, "service/analyzer")
                ),
                log,
            )
            replica = wait_for(
                "the analyzer's status",
                lambda: (
                    (get_json(kubectl, namespace, "tarsreplica/analyzer") or {})
                    .get("status", {})
                    .get("endpoint")
                ),
                log,
            )
            assert replica.startswith("http://analyzer.")

            kubectl("delete", "service/analyzer", "-n", namespace)
            wait_for(
                "the operator to restore the deleted Service",
                lambda: get_json(kubectl, namespace, "service/analyzer"),
                log,
            )

            kubectl(
                "apply", "-n", namespace, "-f", str(REPOSITORY / "examples/runs/volume-run.yaml")
            )
            conditions = wait_for(
                "the run's status to say what it waits for",
                lambda: (
                    (get_json(kubectl, namespace, "selfcodingrun/sample-project") or {})
                    .get("status", {})
                    .get("conditions")
                ),
                log,
            )
            assert conditions

            # A run with a test image: the operator creates its own tester, and deletes it
            # once the run has ended (here stopped before it started).
            kubectl(
                "apply",
                "-n",
                namespace,
                "-f",
                str(REPOSITORY / "examples/runs/test-image-run.yaml"),
            )
            wait_for(
                "the operator to create the run's own tester and its Deployment",
                lambda: get_json(kubectl, namespace, "deployment/itsdangerous-tests-tester"),
                log,
            )
            kubectl(
                "patch", "-n", namespace, "selfcodingrun/itsdangerous-tests", "--type=merge",
                "-p", '{"spec": {"stop": true}}',
            )  # fmt: skip
            wait_for(
                "the operator to delete the ended run's tester",
                lambda: (
                    get_json(kubectl, namespace, "tarsreplica/itsdangerous-tests-tester") is None
                ),
                log,
            )
            events = get_json(kubectl, namespace, "events") or {"items": []}
            assert any(
                event["involvedObject"].get("kind") == "TarsReplica" for event in events["items"]
            ), "the operator posted no Event"
        finally:
            stop_process(process)
        text = log.read_text()
        for refusal in ("forbidden", "Forbidden", "Not enough permissions"):
            assert refusal not in text, f"the operator was refused something:\n{text[-4000:]}"
