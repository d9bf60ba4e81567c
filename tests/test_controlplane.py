"""The local control plane is the real thing: versioned, RBAC-enforcing, with working controllers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from tests.harness import controlplane
from tests.harness.kubectl import REPOSITORY, SETTLE_SECONDS, Kubectl

CONTROLPLANE_CLI = [sys.executable, "-m", "tests.harness.controlplane"]


def _wait_for(
    list_function: Callable[..., Any],
    predicate: Callable[[list[Any]], bool],
    **list_arguments: Any,
) -> None:
    """Watches a list call until PREDICATE holds for the current items (bounded, never sleeps)."""
    listing = list_function(**list_arguments)
    items = list(listing.items)
    if predicate(items):
        return
    by_uid = {item.metadata.uid: item for item in items}
    stream = watch.Watch().stream(
        list_function,
        resource_version=listing.metadata.resource_version,
        timeout_seconds=SETTLE_SECONDS,
        **list_arguments,
    )
    for event in stream:
        obj = event["object"]
        if event["type"] == "DELETED":
            by_uid.pop(obj.metadata.uid, None)
        else:
            by_uid[obj.metadata.uid] = obj
        if predicate(list(by_uid.values())):
            return
    pytest.fail(f"{list_function.__name__} never satisfied the condition")


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_server_and_kubectl_report_the_pinned_release(
    api_client: client.ApiClient, kubectl: Kubectl
) -> None:
    server = client.VersionApi(api_client).get_code()
    assert server.git_version.startswith("v1.37.")
    assert (server.major, server.minor) == ("1", "37")

    versions = json.loads(kubectl("version", "-o", "json").stdout)
    assert versions["clientVersion"]["gitVersion"] == server.git_version
    assert versions["serverVersion"]["gitVersion"] == server.git_version


def test_rbac_forbids_an_unprivileged_user(kubectl: Kubectl, namespace: str) -> None:
    allowed = kubectl("auth", "can-i", "list", "secrets", "-n", namespace, check=False)
    assert (allowed.returncode, allowed.stdout.strip()) == (0, "yes")

    refused = kubectl(
        "auth", "can-i", "list", "secrets", "-n", namespace, as_user="mallory", check=False
    )
    assert (refused.returncode, refused.stdout.strip()) == (1, "no")

    request = kubectl("get", "secrets", "-n", namespace, as_user="mallory", check=False)
    assert request.returncode != 0
    assert 'User "mallory" cannot list resource "secrets"' in request.stderr


def test_controllers_run_deployments_and_collect_garbage(
    api_client: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(api_client)
    core = client.CoreV1Api(api_client)
    labels = {"app": "web"}
    deployment = apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(
                replicas=2,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        # No scheduler serves this name, so the pods stay exactly as the
                        # controllers made them.
                        scheduler_name="tars-tests-unscheduled",
                        containers=[client.V1Container(name="web", image="registry.invalid/web")],
                    ),
                ),
            ),
        ),
    )

    deployment_uid = deployment.metadata and deployment.metadata.uid
    assert deployment_uid

    def owned_by_deployment(replica_sets: list[Any]) -> bool:
        return any(
            owner.uid == deployment_uid
            for replica_set in replica_sets
            for owner in replica_set.metadata.owner_references or []
        )

    _wait_for(apps.list_namespaced_replica_set, owned_by_deployment, namespace=namespace)
    _wait_for(
        core.list_namespaced_pod,
        lambda pods: len(pods) == 2,
        namespace=namespace,
        label_selector="app=web",
    )
    # Nothing binds or runs the pods: they exist, Pending.
    pods: list[Any] = core.list_namespaced_pod(namespace, label_selector="app=web").items
    assert [(pod.status.phase, pod.spec.node_name) for pod in pods] == [("Pending", None)] * 2

    apps.delete_namespaced_deployment("web", namespace, propagation_policy="Background")
    _wait_for(
        apps.list_namespaced_replica_set, lambda replica_sets: not replica_sets, namespace=namespace
    )


def test_namespaces_get_the_cluster_root_certificate(
    api_client: client.ApiClient, control_plane: controlplane.ControlPlane, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    _wait_for(
        core.list_namespaced_config_map,
        lambda config_maps: bool(config_maps),
        namespace=namespace,
        field_selector="metadata.name=kube-root-ca.crt",
    )
    published: Any = core.read_namespaced_config_map("kube-root-ca.crt", namespace)
    assert published.data["ca.crt"].strip() == control_plane.ca_file.read_text().strip()


def _controlplane_cli(*args: str, tools_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CONTROLPLANE_CLI, *args],
        cwd=REPOSITORY,
        check=False,
        env={**os.environ, "TARS_TOOLS_DIR": str(tools_dir)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_second_cluster_runs_alongside_and_down_stops_everything(
    control_plane: controlplane.ControlPlane, kubectl: Kubectl, tmp_path: Path
) -> None:
    state_dir = tmp_path / "second"
    started = _controlplane_cli(
        "up", "--state-dir", str(state_dir), tools_dir=control_plane.tools_dir
    )
    assert started.returncode == 0, started.stderr
    second = controlplane.load(state_dir)
    assert second is not None
    try:
        assert second.server != control_plane.server
        assert second.etcd_url != control_plane.etcd_url
        assert (state_dir / "kubeconfig").is_file()
        namespaces = subprocess.run(
            [str(second.tools_dir / "kubectl"), f"--kubeconfig={second.kubeconfig}",
             "get", "namespace", "default", "-o", "name"],
            capture_output=True, text=True, timeout=SETTLE_SECONDS, check=True,
        )  # fmt: skip
        assert namespaces.stdout.strip() == "namespace/default"
        assert _processes_mentioning(str(state_dir))
    finally:
        stopped = _controlplane_cli(
            "down", "--state-dir", str(state_dir), tools_dir=second.tools_dir
        )
    assert stopped.returncode == 0, stopped.stderr
    assert _processes_mentioning(str(state_dir)) == []
    assert not controlplane.is_up(second)

    repeated = _controlplane_cli("down", "--state-dir", str(state_dir), tools_dir=second.tools_dir)
    assert (repeated.returncode, repeated.stdout.strip()) == (
        0,
        f"no control plane recorded in {state_dir}",
    )
    # The first cluster is untouched.
    assert kubectl("get", "--raw", "/readyz").stdout == "ok"


def test_up_without_binaries_says_so_in_one_line(tmp_path: Path) -> None:
    result = _controlplane_cli("up", "--state-dir", str(tmp_path / "state"), tools_dir=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "lacks etcd, kube-apiserver, kube-controller-manager, kubectl" in result.stderr
    assert not (tmp_path / "state").exists()


def test_tars_crds_are_established_and_served(tars_crds: list[str], kubectl: Kubectl) -> None:
    assert {"tarsreplicas.tars.dev", "selfcodingruns.tars.dev"} <= set(tars_crds)
    for crd in tars_crds:
        established = kubectl(
            "get",
            "crd",
            crd,
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Established')].status}",
        )
        assert established.stdout == "True"
    assert kubectl("get", "tr,scr", "-A").returncode == 0
