"""SelfCodingRuns through the operator and the four role replicas, driven by `tarscli`, on
real pods: the replicas are containers from the replica image (`make images`) on a real node
(`container_node`), scheduled by kube-scheduler and run by the kubelet, containerd and runc,
under the security context the operator gives them.

The coordinator reads the uploaded project and the replicas' status from the API server
as in-cluster clients do, at the `kubernetes` Service's ClusterIP through kube-proxy.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.utils import parse_quantity
from tars_api.vocabulary import Role
from tars_operator.config import OperatorConfig

from tests.harness.e2e import Workspace, project_tests
from tests.harness.kubectl import Kubectl
from tests.harness.node import ContainerNode
from tests.harness.operator_process import get_json, http_get, wait_until
from tests.harness.tools import git

MAX_FILES = "3"
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
# /proc/self/uid_map of a process in the host's user namespace.
HOST_USER_NAMESPACE = "0 0 4294967295"
RUN_AS_USER = str(OperatorConfig().run_as_user)
# A container's own memory limit, as cgroup v2 and cgroup v1 show it inside the container.
MEMORY_LIMIT_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def run_object(workspace: Workspace, kubectl: Kubectl, name: str) -> dict[str, Any]:
    return workspace.kubectl_json(kubectl, "selfcodingrun", name)


def started_run(workspace: Workspace, project: Path, *extra: str) -> str:
    """`tarscli self-code start -t ledgerly` in `project`; the run's name."""
    started = workspace.tarscli(
        "self-code", "start", "-t", "ledgerly", "--max-files", MAX_FILES, *extra, cwd=project
    )
    # stdout is the run's name alone (the rest goes to stderr), for scripts.
    return started.stdout.strip()


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


def test_crictl_lists_each_role_container_by_pod_and_name(
    workspace: Workspace, container_node: ContainerNode, node_kubectl: Kubectl
) -> None:
    listed = json.loads(container_node.crictl("ps", "--output=json"))["containers"]
    running = {
        (container["labels"]["io.kubernetes.pod.name"], container["metadata"]["name"])
        for container in listed
        if container["labels"]["io.kubernetes.pod.namespace"] == workspace.namespace
        and container["state"] == "CONTAINER_RUNNING"
    }
    for role in Role:
        pod = role_pod(node_kubectl, workspace.namespace, role)
        (container,) = pod["spec"]["containers"]
        assert (pod["metadata"]["name"], container["name"]) in running, (role, running)


@pytest.mark.parametrize("role", list(Role))
def test_each_role_runs_as_a_confined_container(
    workspace: Workspace, container_node: ContainerNode, node_kubectl: Kubectl, role: Role
) -> None:
    namespace = workspace.namespace
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


def test_replica_send_and_api_reach_the_running_replicas(workspace: Workspace) -> None:
    """Through the API server's service proxy, with the test's credentials, as a user would."""
    info = json.loads(workspace.tarscli("replica", "send", "analyzer", "/info").stdout)
    assert info["role"] == "analyzer", info
    request = {
        "file": {"path": "shop/cart.py", "content": "import os\n\n\ndef total():\n    return 1\n"}
    }
    analyzed = workspace.tarscli(
        "replica", "send", "analyzer", "/v1/analyze", "--data", json.dumps(request), "-o", "yaml"
    )
    report = yaml.safe_load(analyzed.stdout)
    assert report["path"] == "shop/cart.py"
    assert "F401" in {finding["rule"] for finding in report["findings"]}, report

    document = json.loads(workspace.tarscli("replica", "api", "generator").stdout)
    assert {"/info", "/v1/generate", "/v1/model-check"} <= set(document["paths"])

    def refused(*args: str) -> str:
        answer = workspace.tarscli("replica", "send", *args, check=False)
        assert answer.returncode == 1 and not answer.stdout, answer
        (line,) = answer.stderr.splitlines()
        return line

    assert refused("tester", "/v1/nothing") == (
        'error: the tester replica "tester" does not serve /v1/nothing; '
        '"tarscli replica api tester" shows what it serves'
    )
    assert refused("analyzer", "/v1/analyze") == (
        'error: the analyzer replica "analyzer" serves /v1/analyze only with POST, not GET'
    )
    assert refused("analyzer", "/metrics").startswith(
        'error: the analyzer replica "analyzer" answered GET /metrics with text/plain'
    )
    assert refused("analyzer", "/v1/analyze", "--data", "{}").startswith(
        'error: the analyzer replica "analyzer" answered 422 Unprocessable'
    )


def test_start_watch_diff_apply(
    workspace: Workspace, node_kubectl: Kubectl, sample_project: Path
) -> None:
    name = started_run(workspace, sample_project)
    watched = workspace.tarscli("self-code", "status", name, "--watch", cwd=sample_project)
    assert "Succeeded" in watched.stdout, watched.stdout
    run = run_object(workspace, node_kubectl, name)
    status = run["status"]
    assert status["phase"] == "Succeeded", status
    assert status["statistics"]["improvementsAccepted"] >= 1, status
    assert status["reportConfigMap"] == f"{name}-report"
    report = workspace.kubectl_json(node_kubectl, "configmap", status["reportConfigMap"])
    assert report["metadata"]["ownerReferences"][0]["uid"] == run["metadata"]["uid"]
    results = json.loads(report["data"]["report.json"])
    assert results["statistics"] == status["statistics"]

    patch = workspace.tarscli("self-code", "diff", name, cwd=sample_project).stdout
    assert patch == report["data"]["patch.diff"]
    assert patch.startswith("--- a/ledgerly/"), patch[:200]

    applied = workspace.tarscli("self-code", "apply", name, cwd=sample_project)
    assert "applied to" in applied.stdout
    changed = git(sample_project, "diff", "--name-only").split()
    assert changed and all(path.startswith("ledgerly/") for path in changed), changed
    after = project_tests(sample_project)
    assert after.returncode == 0, after.stdout + after.stderr

    again = workspace.tarscli("self-code", "apply", name, cwd=sample_project, check=False)
    assert again.returncode != 0
    assert again.stderr.startswith("error: the patch of selfcodingrun/")
    assert len(again.stderr.strip().splitlines()) == 1
    assert git(sample_project, "diff", "--name-only").split() == changed, "nothing half-applied"


# --- faults, stop and scaling -------------------------------------------------------------

# Each test run sleeps first, so a run lasts long enough to be interrupted mid-way.
SLOW_TESTS = "sleep 3; exec python -m pytest -q -p no:cacheprovider\n"
ALL_FILES = "9"
MID_RUN_STAGES = ("Generating", "Testing")


def slow_project(project: Path) -> Path:
    (project / "slow_tests.sh").write_text(SLOW_TESTS)
    git(project, "add", "slow_tests.sh")
    git(project, "commit", "-q", "-m", "slow tests")
    return project


def start_slow_run(workspace: Workspace, project: Path) -> str:
    return started_run(
        workspace,
        slow_project(project),
        "--max-files",
        ALL_FILES,
        "--test-command",
        "sh slow_tests.sh",
    )


def wait_for_run(
    workspace: Workspace, kubectl: Kubectl, name: str, predicate: Any, what: str
) -> dict[str, Any]:
    return wait_until(lambda: run_object(workspace, kubectl, name), predicate, what)


def working(run: dict[str, Any]) -> bool:
    """Running and testing candidates: the run is mid-way, with a checkpoint to resume from."""
    status = run.get("status") or {}
    assert status.get("phase") not in ("Succeeded", "Failed", "Stopped"), status
    return status.get("phase") == "Running" and status.get("stage") in MID_RUN_STAGES


def ended(run: dict[str, Any]) -> bool:
    return (run.get("status") or {}).get("phase") in ("Succeeded", "Failed", "Stopped")


def assert_applied_once(workspace: Workspace, project: Path, name: str) -> None:
    """The patch touches each file once and applies to the untouched project; its tests pass."""
    patch = workspace.tarscli("self-code", "diff", name, cwd=project).stdout
    headers = [line for line in patch.splitlines() if line.startswith("+++ b/")]
    assert headers and len(headers) == len(set(headers)), headers
    workspace.tarscli("self-code", "apply", name, cwd=project)
    after = project_tests(project)
    assert after.returncode == 0, after.stdout + after.stderr


def assert_run_survives(
    workspace: Workspace, kubectl: Kubectl, project: Path, fault: Callable[[], None]
) -> dict[str, Any]:
    """A slow run on PROJECT, FAULT done to it mid-way, succeeds and applies once; the run."""
    name = start_slow_run(workspace, project)
    wait_for_run(workspace, kubectl, name, working, "the run mid-way")
    fault()
    run = wait_for_run(workspace, kubectl, name, ended, "the run to end")
    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert_applied_once(workspace, project, name)
    return run


def operator_restart(workspace: Workspace) -> Callable[[], None]:
    """A fault: the workspace's operator killed and started again."""

    def restart() -> None:
        workspace.operator.kill()
        workspace.operator.start()

    return restart


def coordinator_pod(workspace: Workspace, kubectl: Kubectl) -> dict[str, Any]:
    pods = workspace.kubectl_json(kubectl, "pods", "-l", "app.kubernetes.io/instance=coordinator")[
        "items"
    ]
    running = [pod for pod in pods if pod["status"].get("phase") == "Running"]
    assert len(running) == 1, [pod["metadata"]["name"] for pod in pods]
    return running[0]


def generators_used(coordinator: dict[str, Any]) -> set[str]:
    """The generator endpoints the COORDINATOR pod has sent requests to (its metrics)."""
    code, metrics = http_get(f"http://{coordinator['status']['podIP']}:8080/metrics")
    assert code == 200, metrics
    return {
        line.split('endpoint="', 1)[1].split('"', 1)[0]
        for line in metrics.splitlines()
        if line.startswith("tars_coordinator_requests_total{") and 'role="generator"' in line
    }


def test_killed_coordinator_container_resumes_the_run(
    workspace: Workspace,
    container_node: ContainerNode,
    node_kubectl: Kubectl,
    sample_project: Path,
) -> None:
    killed: list[str] = []

    def kill_the_coordinator() -> None:
        killed.append(container_id(coordinator_pod(workspace, node_kubectl)))
        container_node.ctr("tasks", "kill", "--signal", "SIGKILL", killed[0])

    assert_run_survives(workspace, node_kubectl, sample_project, kill_the_coordinator)
    restarted = coordinator_pod(workspace, node_kubectl)
    assert restarted["status"]["containerStatuses"][0]["restartCount"] >= 1
    assert container_id(restarted) != killed[0]


def test_restarted_operator_resumes_mirroring(
    workspace: Workspace, node_kubectl: Kubectl, sample_project: Path
) -> None:
    run = assert_run_survives(workspace, node_kubectl, sample_project, operator_restart(workspace))
    statistics = run["status"]["statistics"]
    assert statistics["filesProcessed"] == statistics["filesTotal"] > 1, statistics


def test_stop_ends_the_run_and_keeps_accepted_work(
    workspace: Workspace, node_kubectl: Kubectl, sample_project: Path
) -> None:
    name = start_slow_run(workspace, sample_project)
    wait_for_run(workspace, node_kubectl, name, working, "the run mid-way")
    stopped = workspace.tarscli("self-code", "stop", name)
    assert "stop requested" in stopped.stdout
    run = wait_for_run(workspace, node_kubectl, name, ended, "the run to stop")
    status = run["status"]
    assert status["phase"] == "Stopped", status
    assert status["statistics"]["filesProcessed"] < status["statistics"]["filesTotal"], status
    complete = {c["type"]: c for c in status["conditions"]}["Complete"]
    assert complete["status"] == "True" and complete["reason"] == "Stopped"
    report = workspace.kubectl_json(node_kubectl, "configmap", status["reportConfigMap"])
    results = json.loads(report["data"]["report.json"])
    assert (
        results["statistics"]["improvementsAccepted"]
        == status["statistics"]["improvementsAccepted"]
    )
    if status["statistics"]["improvementsAccepted"]:
        assert_applied_once(workspace, sample_project, name)


def test_unreachable_git_url_fails_with_a_condition(
    workspace: Workspace, node_kubectl: Kubectl
) -> None:
    # The coordinator pod's own loopback, where nothing listens: refused at once, wherever
    # the tests run (an address outside the machine would depend on its network).
    url = "http://127.0.0.1:9/nowhere.git"
    manifest = {
        "apiVersion": "tars.dev/v1alpha1",
        "kind": "SelfCodingRun",
        "metadata": {"name": "unreachable", "namespace": workspace.namespace},
        "spec": {"targets": ["src"], "source": {"git": {"url": url}}, "engine": "static"},
    }
    node_kubectl("apply", "-f", "-", input=json.dumps(manifest))
    run = wait_for_run(workspace, node_kubectl, "unreachable", ended, "the git run to end")
    status = run["status"]
    assert status["phase"] == "Failed", status
    complete = {c["type"]: c for c in status["conditions"]}["Complete"]
    assert complete["status"] == "True" and url in complete["message"], complete


def test_scaled_generators_become_containers_and_share_the_work(
    workspace: Workspace,
    container_node: ContainerNode,
    node_kubectl: Kubectl,
    sample_project: Path,
) -> None:
    """Last of the module's tests that use the replicas: it leaves three generators behind."""
    namespace = workspace.namespace
    node_kubectl("scale", "tr/generator", "--replicas=3", "-n", namespace)
    wait_until(
        lambda: workspace.kubectl_json(node_kubectl, "tr", "generator"),
        lambda replica: (replica.get("status") or {}).get("readyReplicas") == 3,
        "three ready generators",
    )
    generators = get_json(
        node_kubectl, "pod", "-l", "app.kubernetes.io/instance=generator", "-n", namespace
    )
    running = set(container_node.containers())
    assert len(generators["items"]) == 3
    assert all(container_id(pod) in running for pod in generators["items"])

    name = started_run(workspace, sample_project, "--max-files", ALL_FILES)
    run = wait_for_run(workspace, node_kubectl, name, ended, "the run to end")
    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert len(generators_used(coordinator_pod(workspace, node_kubectl))) > 1


def test_run_without_replicas_stays_pending_and_says_why(
    bare_workspace: Workspace, node_kubectl: Kubectl, sample_project: Path
) -> None:
    name = started_run(bare_workspace, sample_project)
    run = wait_until(
        lambda: run_object(bare_workspace, node_kubectl, name),
        lambda current: any(
            c["type"] == "ReplicasReady" and c["status"] == "False"
            for c in (current.get("status") or {}).get("conditions", [])
        ),
        "the waiting condition",
    )
    status = run["status"]
    assert status["phase"] == "Pending"
    condition = {c["type"]: c for c in status["conditions"]}["ReplicasReady"]
    assert condition["reason"] == "NoReadyCoordinator"
    assert "analyzer, generator, tester" in condition["message"], condition


def test_deadline_ends_the_run_failed_with_its_reason(
    workspace: Workspace, node_kubectl: Kubectl, sample_project: Path
) -> None:
    """deadlineSeconds is at least 60: here the baseline test run alone takes longer."""
    (sample_project / "slow_tests.sh").write_text(SLOW_TESTS.replace("sleep 3", "sleep 75"))
    git(sample_project, "add", "slow_tests.sh")
    git(sample_project, "commit", "-q", "-m", "very slow tests")
    name = started_run(workspace, sample_project, "--test-command", "sh slow_tests.sh")
    node_kubectl(
        "patch", "selfcodingrun", name, "-n", workspace.namespace, "--type=merge",
        "-p", '{"spec": {"deadlineSeconds": 60}}', check=False,
    )  # fmt: skip
    run = run_object(workspace, node_kubectl, name)
    if run["spec"]["deadlineSeconds"] != 60:
        pytest.fail(f"deadlineSeconds could not be set: {run['spec']}")
    ended_run = wait_for_run(workspace, node_kubectl, name, ended, "the deadline to end the run")
    status = ended_run["status"]
    assert status["phase"] == "Failed", status
    complete = {c["type"]: c for c in status["conditions"]}["Complete"]
    assert complete["reason"] == "DeadlineExceeded", complete
