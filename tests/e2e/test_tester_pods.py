"""Tester pods as real containers: the operator's pod spec on a real kubelet and runtime.

The operator runs as a subprocess against a cluster with a real node (`container_node`);
the tester replica it creates runs from the replica image (`make images`) under the
security context the operator gives it, enforced by containerd and runc. A test request
then goes to the pod as the coordinator sends it, by the pod's address.

One run's tests try to read another run's files in the same tester pod. With the default
`userNamespace` isolation bwrap holds them inside the pod; with `pod` isolation it cannot,
and the run's status says so.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from tars_api.names import REPLICA_PORT
from tars_api.replica import TarsReplica
from tars_api.vocabulary import Role
from tars_engine.core.models import SandboxMode, TestRequest
from tars_engine.core.snapshot import pack_project
from tars_engine.transports.http_client import HttpTester
from tars_operator.config import ENV_PREFIX, OperatorConfig
from tars_operator.config import TesterIsolation as Isolation

from tests.e2e.conftest import operated_namespace, replica_pods_environment
from tests.harness.e2e import Workspace
from tests.harness.kubectl import Kubectl
from tests.harness.node import ContainerNode
from tests.harness.operator_process import get_json, wait_for
from tests.harness.projects import calc_project

OTHER_RUNS_SECRET = "other-runs-private-words"
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
SCRATCH = OperatorConfig().scratch_dir
# What the prying tests add to calc's three.
PRYING_TEST_COUNT = 3


def prying_tests() -> str:
    """Tests that pass only when another run's files in the same pod are out of reach."""
    return textwrap.dedent(
        f"""\
        import gzip, os, pathlib, tarfile

        SCRATCH = pathlib.Path({SCRATCH!r})
        # Spelled in hex, so that this file, which the search reads too, does not hold it.
        SECRET = bytes.fromhex({OTHER_RUNS_SECRET.encode().hex()!r})


        def readable_files():
            for directory, _, names in os.walk(SCRATCH):
                for name in names:
                    path = pathlib.Path(directory, name)
                    try:
                        yield path, path.read_bytes()
                    except OSError:
                        continue


        def test_cannot_read_another_runs_copy_or_snapshot():
            for path, data in readable_files():
                if path.suffix == ".gz":
                    try:
                        data = gzip.decompress(data)
                    except (OSError, EOFError):
                        pass
                assert SECRET not in data, path


        def test_cannot_write_the_scratch_volume_outside_its_copy():
            try:
                (SCRATCH / "planted.txt").write_text("x")
            except OSError:
                return
            raise AssertionError("wrote the scratch volume")


        def test_has_no_service_account_token():
            assert not pathlib.Path({TOKEN_PATH!r}).exists()
        """
    )


@pytest.fixture(params=list(Isolation))
def tester_workspace(
    request: pytest.FixtureRequest,
    container_node: ContainerNode,
    node_kubectl: Kubectl,
    node_crds: list[str],
    replica_image: str,
    tmp_path: Path,
) -> Iterator[tuple[Isolation, Workspace]]:
    isolation: Isolation = request.param
    environment = {
        **replica_pods_environment(replica_image),
        f"{ENV_PREFIX}TESTER_ISOLATION": isolation.value,
    }
    with operated_namespace(
        container_node.plane.kubeconfig, node_kubectl, "tester-pods", tmp_path, environment
    ) as workspace:
        tester = TarsReplica.build("tester", Role.tester, namespace=workspace.namespace)
        node_kubectl("apply", "-f", "-", input=json.dumps(tester.to_k8s()))
        yield isolation, workspace


def ready_tester_pod(kubectl: Kubectl, namespace: str) -> dict:
    def ready() -> dict | None:
        pods = get_json(kubectl, "pod", "-l", "app.kubernetes.io/instance=tester", "-n", namespace)
        for pod in pods["items"]:
            conditions = pod["status"].get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                return pod
        return None

    return wait_for(ready, f"a Ready tester pod in {namespace}")


def test_bwrap_holds_one_run_from_another_in_a_shared_tester_pod(
    tester_workspace: tuple[Isolation, Workspace],
    container_node: ContainerNode,
    node_kubectl: Kubectl,
    tmp_path: Path,
) -> None:
    isolation, workspace = tester_workspace
    pod = ready_tester_pod(node_kubectl, workspace.namespace)
    pod_name = pod["metadata"]["name"]
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("//", 1)[1]
    assert container_id in container_node.containers()

    def in_pod(*command: str) -> subprocess.CompletedProcess[str]:
        return node_kubectl(
            "exec", pod_name, "-n", workspace.namespace, "--", *command, check=False
        )

    # What the runtime enforces, seen from inside the pod.
    assert in_pod("id", "-u").stdout.strip() == "65532"
    assert in_pod("touch", "/root-is-read-only").returncode != 0
    assert in_pod("test", "-e", TOKEN_PATH).returncode != 0
    host_wide = "0 0 4294967295"
    uid_map = " ".join(in_pod("cat", "/proc/self/uid_map").stdout.split())
    assert (uid_map != host_wide) is (isolation is Isolation.user_namespace), uid_map

    tester = HttpTester(f"http://{pod['status']['podIP']}:{REPLICA_PORT}")
    try:
        other = calc_project(tmp_path / "other", extra={"notes.txt": OTHER_RUNS_SECRET})
        tester.put_snapshot("other-run", pack_project(other))
        prying = calc_project(tmp_path / "this", extra={"tests/test_prying.py": prying_tests()})
        ref = tester.put_snapshot("this-run", pack_project(prying))
        # The other run's snapshot is in the pod's scratch volume while this run's tests run.
        assert in_pod("find", SCRATCH, "-path", "*other-run*", "-name", "*.tar.gz").stdout
        result = tester.run_tests(TestRequest(snapshot=ref, candidates=[]))
        assert result.sandbox is not None
        if isolation is Isolation.user_namespace:
            assert result.sandbox.isolated, result.sandbox.detail
            assert result.passed and result.tests_run == 3 + PRYING_TEST_COUNT, result.output
        else:
            assert not result.sandbox.isolated
            assert "cannot create namespaces" in result.sandbox.detail
            assert not result.passed, result.output
            assert "test_cannot_read_another_runs_copy_or_snapshot" in result.output
            refused = tester.run_tests(
                TestRequest(snapshot=ref, candidates=[], sandbox=SandboxMode.required)
            )
            assert refused.sandbox is not None and refused.sandbox.refused
            assert not refused.passed
    finally:
        tester.close()
