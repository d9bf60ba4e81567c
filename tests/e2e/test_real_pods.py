"""The whole workflow on real pods: the four role replicas as containers from the replica
image (`make images`) on a real node (`container_node`), scheduled by kube-scheduler and run
by the kubelet, containerd and runc, under the security context the operator gives them.

The coordinator reads the uploaded project and the replicas' status from the API server
as in-cluster clients do, at the `kubernetes` Service's ClusterIP through kube-proxy. One
namespace set up by `tarscli self-code setup` serves the module's tests.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.utils import parse_quantity
from tars_api.vocabulary import Role
from tars_operator.config import ENV_PREFIX, OperatorConfig

from tests.e2e.conftest import operated_namespace
from tests.e2e.test_cluster_runs import (
    ALL_FILES,
    assert_run_survives,
    coordinator_pod,
    ended,
    generators_used,
    operator_restart,
    run_object,
    sample_tests_pass,
    started_run,
    wait_for_run,
)
from tests.harness.e2e import SETUP_TIMEOUT_SECONDS, Workspace
from tests.harness.kubectl import Kubectl
from tests.harness.node import ContainerNode
from tests.harness.operator_process import get_json, wait_until

TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
# /proc/self/uid_map of a process in the host's user namespace.
HOST_USER_NAMESPACE = "0 0 4294967295"
RUN_AS_USER = str(OperatorConfig().run_as_user)
# A container's own memory limit, as cgroup v2 and cgroup v1 show it inside the container.
MEMORY_LIMIT_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


@pytest.fixture(scope="module")
def pods_workspace(
    container_node: ContainerNode,
    node_kubectl: Kubectl,
    node_crds: list[str],
    replica_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Workspace]:
    """A namespace set up by `tarscli self-code setup`, its replicas real containers."""
    environment = {
        f"{ENV_PREFIX}IMAGE": replica_image,
        f"{ENV_PREFIX}IMAGE_PULL_POLICY": "Never",
    }
    with operated_namespace(
        container_node.plane.kubeconfig,
        node_kubectl,
        "real-pods",
        tmp_path_factory.mktemp("operator"),
        environment,
    ) as workspace:
        workspace.tarscli("self-code", "setup", "--timeout", SETUP_TIMEOUT_SECONDS)
        yield workspace


def role_pod(kubectl: Kubectl, namespace: str, role: Role) -> dict[str, Any]:
    pods = get_json(
        kubectl, "pod", "-l", f"app.kubernetes.io/instance={role.value}", "-n", namespace
    )
    running = [pod for pod in pods["items"] if pod["status"].get("phase") == "Running"]
    assert len(running) == 1, [pod["metadata"]["name"] for pod in pods["items"]]
    return running[0]


def container_id(pod: dict[str, Any]) -> str:
    (status,) = pod["status"]["containerStatuses"]
    runtime, _, identifier = status["containerID"].partition("://")
    assert runtime == "containerd", status["containerID"]
    return identifier


@pytest.mark.parametrize("role", list(Role))
def test_each_role_runs_as_a_confined_container(
    pods_workspace: Workspace, container_node: ContainerNode, node_kubectl: Kubectl, role: Role
) -> None:
    namespace = pods_workspace.namespace
    pod = role_pod(node_kubectl, namespace, role)
    assert container_id(pod) in container_node.containers()

    def in_pod(*command: str) -> subprocess.CompletedProcess[str]:
        return node_kubectl(
            "exec", pod["metadata"]["name"], "-n", namespace, "--", *command, check=False
        )

    assert in_pod("id", "-u").stdout.strip() == RUN_AS_USER
    assert in_pod("touch", "/root-is-read-only").returncode != 0
    has_token = in_pod("test", "-e", TOKEN_PATH).returncode == 0
    assert has_token is (role is Role.coordinator)
    uid_map = " ".join(in_pod("cat", "/proc/self/uid_map").stdout.split())
    assert (uid_map != HOST_USER_NAMESPACE) is (role is Role.tester), uid_map
    (container,) = pod["spec"]["containers"]
    memory_limit = parse_quantity(container["resources"]["limits"]["memory"])
    # Whichever of the two the node mounts (cgroup v1 here, v2 elsewhere) holds the limit.
    enforced = in_pod("cat", *MEMORY_LIMIT_FILES).stdout.split()
    assert enforced == [str(memory_limit)], enforced


def test_run_on_real_pods_gets_improvements_accepted(
    pods_workspace: Workspace, node_kubectl: Kubectl, sample_project: Path
) -> None:
    name = started_run(pods_workspace, sample_project)
    watched = pods_workspace.tarscli("self-code", "status", name, "--watch", cwd=sample_project)
    assert "Succeeded" in watched.stdout, watched.stdout
    status = run_object(pods_workspace, node_kubectl, name)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["statistics"]["improvementsAccepted"] >= 1, status

    patch = pods_workspace.tarscli("self-code", "diff", name, cwd=sample_project).stdout
    assert patch.startswith("--- a/ledgerly/"), patch[:200]
    pods_workspace.tarscli("self-code", "apply", name, cwd=sample_project)
    after = sample_tests_pass(sample_project)
    assert after.returncode == 0, after.stdout + after.stderr


def test_killed_coordinator_container_resumes_the_run(
    pods_workspace: Workspace,
    container_node: ContainerNode,
    node_kubectl: Kubectl,
    sample_project: Path,
) -> None:
    killed: list[str] = []

    def kill_the_coordinator() -> None:
        killed.append(container_id(coordinator_pod(pods_workspace, node_kubectl)))
        container_node.ctr("tasks", "kill", "--signal", "SIGKILL", killed[0])

    assert_run_survives(pods_workspace, node_kubectl, sample_project, kill_the_coordinator)
    restarted = coordinator_pod(pods_workspace, node_kubectl)
    assert restarted["status"]["containerStatuses"][0]["restartCount"] >= 1
    assert container_id(restarted) != killed[0]


def test_restarted_operator_resumes_mirroring(
    pods_workspace: Workspace, node_kubectl: Kubectl, sample_project: Path
) -> None:
    fault = operator_restart(pods_workspace)
    assert_run_survives(pods_workspace, node_kubectl, sample_project, fault)


def test_scaled_generators_become_containers_and_share_the_work(
    pods_workspace: Workspace,
    container_node: ContainerNode,
    node_kubectl: Kubectl,
    sample_project: Path,
) -> None:
    """Last in the module: it leaves three generators behind."""
    namespace = pods_workspace.namespace
    node_kubectl("scale", "tr/generator", "--replicas=3", "-n", namespace)
    wait_until(
        lambda: pods_workspace.kubectl_json(node_kubectl, "tr", "generator"),
        lambda replica: (replica.get("status") or {}).get("readyReplicas") == 3,
        "three ready generators",
    )
    generators = get_json(
        node_kubectl, "pod", "-l", "app.kubernetes.io/instance=generator", "-n", namespace
    )
    running = set(container_node.containers())
    assert len(generators["items"]) == 3
    assert all(container_id(pod) in running for pod in generators["items"])

    name = started_run(pods_workspace, sample_project, "--max-files", ALL_FILES)
    run = wait_for_run(pods_workspace, node_kubectl, name, ended, "the run to end")
    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert len(generators_used(coordinator_pod(pods_workspace, node_kubectl))) > 1
