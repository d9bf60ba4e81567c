"""The operator against the real API server and kube-controller-manager.

There is no kubelet: pods are created but never run. Where a test needs ready pods it
marks them Ready through the pod status subresource, as a kubelet would, and the real
ReplicaSet and Deployment controllers carry that up to the Deployment the operator watches.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.harness.operator_process import (
    Kubectl,
    OperatorProcess,
    get_json,
    http_get,
    wait_for,
    wait_until,
)

REPOSITORY = Path(__file__).resolve().parents[2]
MANAGED = "app.kubernetes.io/managed-by=tars-operator"


def apply(kubectl: Kubectl, namespace: str, manifest: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))


def replica_manifest(name: str, role: str, replicas: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tars.dev/v1alpha1",
        "kind": "TarsReplica",
        "metadata": {"name": name},
        "spec": {"role": role, "replicas": replicas, **spec},
    }


def patch(kubectl: Kubectl, namespace: str, target: str, body: dict[str, Any], *extra: str) -> None:
    kubectl("patch", "-n", namespace, target, "--type=merge", "-p", json.dumps(body), *extra)


def condition(obj: dict[str, Any] | None, type: str) -> dict[str, Any]:
    for entry in ((obj or {}).get("status") or {}).get("conditions") or []:
        if entry["type"] == type:
            return dict(entry)
    return {}


def replica(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any] | None:
    result: dict[str, Any] | None = get_json(kubectl, "-n", namespace, "tarsreplica", name)
    return result


def deployment(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any] | None:
    result: dict[str, Any] | None = get_json(kubectl, "-n", namespace, "deployment", name)
    return result


def events(kubectl: Kubectl, namespace: str, name: str) -> list[dict[str, Any]]:
    listed = get_json(
        kubectl, "-n", namespace, "events", f"--field-selector=involvedObject.name={name}"
    )
    return list(listed["items"])


def reasons(kubectl: Kubectl, namespace: str, name: str) -> list[str]:
    return [event["reason"] for event in events(kubectl, namespace, name)]


def mark_pods_ready(kubectl: Kubectl, namespace: str, instance: str) -> int:
    """Play the kubelet for the replica's current pods: Running and Ready."""
    pods = get_json(kubectl, "-n", namespace, "pods", f"-l=app.kubernetes.io/instance={instance}")
    ready = {
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
                {"type": "Ready", "status": "True"},
            ],
        }
    }
    live = [pod for pod in pods["items"] if not pod["metadata"].get("deletionTimestamp")]
    for pod in live:
        patch(kubectl, namespace, f"pod/{pod['metadata']['name']}", ready, "--subresource=status")
    return len(live)


def children(kubectl: Kubectl, namespace: str, kind: str) -> list[str]:
    listed = get_json(kubectl, "-n", namespace, kind, f"-l={MANAGED}")
    return sorted(item["metadata"]["name"] for item in listed["items"])


def phase(obj: dict[str, Any]) -> str | None:
    phase_value: str | None = (obj.get("status") or {}).get("phase")
    return phase_value


def desired_pods(kubectl: Kubectl, namespace: str, name: str, count: int) -> dict[str, Any]:
    return wait_until(
        lambda: deployment(kubectl, namespace, name),
        lambda current: current["spec"]["replicas"] == count,
        f"Deployment {name} to want {count} pods",
    )


def test_replica_gets_owned_children_status_and_events(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    manifest = yaml.safe_load((REPOSITORY / "examples" / "replicas" / "generator.yaml").read_text())
    apply(kubectl, namespace, manifest)
    owner = wait_for(lambda: replica(kubectl, namespace, "generator"), "the TarsReplica")
    created = wait_for(lambda: deployment(kubectl, namespace, "generator"), "the Deployment")
    service = wait_for(
        lambda: get_json(kubectl, "-n", namespace, "service", "generator"), "the Service"
    )
    for child in (created, service):
        (reference,) = child["metadata"]["ownerReferences"]
        assert reference["uid"] == owner["metadata"]["uid"]
        assert reference["kind"] == "TarsReplica"
        assert reference["controller"] is True and reference["blockOwnerDeletion"] is True
        assert child["metadata"]["labels"]["app.kubernetes.io/component"] == "generator"
    assert created["spec"]["replicas"] == 2
    pod = created["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True

    observed = wait_until(
        lambda: replica(kubectl, namespace, "generator"),
        lambda current: "observedGeneration" in (current.get("status") or {}),
        "the replica's status",
    )
    status = observed["status"]
    assert status["endpoint"] == f"http://generator.{namespace}.svc:8080"
    assert (
        status["selector"]
        == "app.kubernetes.io/instance=generator,app.kubernetes.io/name=tars-replica"
    )
    assert (status["phase"], status["readyReplicas"], status["observedGeneration"]) == (
        "Pending",
        0,
        1,
    )
    ready = condition(observed, "Ready")
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == (
        "False",
        "ReplicasNotReady",
        1,
    )
    assert condition(observed, "Progressing")["status"] == "True"
    wait_for(lambda: "Created" in reasons(kubectl, namespace, "generator"), "the Created event")

    # The pods become ready, as a kubelet would report it: the status follows the Deployment.
    wait_for(
        lambda: mark_pods_ready(kubectl, namespace, "generator") == 2, "two pods to mark ready"
    )
    ready_now = wait_until(
        lambda: replica(kubectl, namespace, "generator"),
        lambda current: phase(current) == "Ready",
        "phase Ready",
    )
    assert ready_now["status"]["readyReplicas"] == 2
    ready = condition(ready_now, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "AllReplicasReady")
    assert ready["lastTransitionTime"] >= condition(observed, "Ready")["lastTransitionTime"]
    wait_for(lambda: "Ready" in reasons(kubectl, namespace, "generator"), "the Ready event")
    ready_events = [
        event for event in events(kubectl, namespace, "generator") if event["reason"] == "Ready"
    ]
    assert len(ready_events) == 1 and ready_events[0].get("count", 1) == 1, (
        "one Event per transition"
    )


def test_edit_scale_suspend_and_delete(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    apply(
        kubectl,
        namespace,
        replica_manifest("tester", "tester", env=[{"name": "EXTRA", "value": "1"}]),
    )
    wait_for(lambda: deployment(kubectl, namespace, "tester"), "the Deployment")

    kubectl("scale", "-n", namespace, "tarsreplica/tester", "--replicas=3")
    desired_pods(kubectl, namespace, "tester", 3)
    scale = wait_until(
        lambda: get_json(kubectl, "-n", namespace, "tarsreplica", "tester", "--subresource=scale"),
        lambda current: current["status"].get("replicas") == 3,
        "the scale subresource to count 3 pods",
    )
    assert scale["spec"]["replicas"] == 3
    assert (
        scale["status"]["selector"]
        == "app.kubernetes.io/instance=tester,app.kubernetes.io/name=tars-replica"
    )

    # A template change rolls out; with pods that never get ready the old ones stay, as they should.
    patch(
        kubectl,
        namespace,
        "tarsreplica/tester",
        {"spec": {"model": "qwen2.5-coder", "replicas": 2}},
    )
    edited = desired_pods(kubectl, namespace, "tester", 2)
    env = {
        item["name"]: item.get("value")
        for item in edited["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert (env["TARS_MODEL"], env["EXTRA"]) == ("qwen2.5-coder", "1")
    wait_for(lambda: "Updated" in reasons(kubectl, namespace, "tester"), "the Updated event")
    wait_until(
        lambda: replica(kubectl, namespace, "tester"),
        lambda current: (
            (current.get("status") or {}).get("observedGeneration")
            == current["metadata"]["generation"]
        ),
        "the status to observe the edit",
    )

    patch(kubectl, namespace, "tarsreplica/tester", {"spec": {"suspend": True}})
    desired_pods(kubectl, namespace, "tester", 0)
    suspended = wait_until(
        lambda: replica(kubectl, namespace, "tester"),
        lambda current: phase(current) == "Suspended",
        "phase Suspended",
    )
    assert suspended["spec"]["replicas"] == 2, "suspend keeps the desired count"
    assert condition(suspended, "Ready")["reason"] == "Suspended"
    patch(kubectl, namespace, "tarsreplica/tester", {"spec": {"suspend": False}})
    desired_pods(kubectl, namespace, "tester", 2)

    kubectl("delete", "-n", namespace, "tarsreplica/tester", "--wait=true")
    wait_for(
        lambda: deployment(kubectl, namespace, "tester") is None,
        "garbage collection of the Deployment",
    )
    wait_for(
        lambda: get_json(kubectl, "-n", namespace, "service", "tester") is None,
        "garbage collection of the Service",
    )


def test_deleted_child_is_applied_again(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    apply(kubectl, namespace, replica_manifest("analyzer", "analyzer"))
    first = wait_for(
        lambda: get_json(kubectl, "-n", namespace, "service", "analyzer"), "the Service"
    )
    kubectl("delete", "-n", namespace, "service/analyzer")
    again = wait_until(
        lambda: get_json(kubectl, "-n", namespace, "service", "analyzer"),
        lambda current: current["metadata"]["uid"] != first["metadata"]["uid"],
        "the Service to be applied again",
    )
    assert again["metadata"]["ownerReferences"][0]["name"] == "analyzer"
    wait_for(lambda: "Restored" in reasons(kubectl, namespace, "analyzer"), "the Restored event")


def run_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "tars.dev/v1alpha1",
        "kind": "SelfCodingRun",
        "metadata": {"name": name},
        "spec": {"targets": ["src"], "source": {"git": {"url": "https://example.org/project.git"}}},
    }


def run(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any] | None:
    result: dict[str, Any] | None = get_json(kubectl, "-n", namespace, "selfcodingrun", name)
    return result


def test_run_waits_for_a_ready_coordinator_then_stops(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    apply(kubectl, namespace, run_manifest("first"))
    waiting = wait_until(
        lambda: run(kubectl, namespace, "first"),
        lambda current: bool(condition(current, "ReplicasReady")),
        "the run's ReplicasReady condition",
    )
    assert waiting["spec"]["maxFiles"] == 20 and waiting["spec"]["engine"] == "static", (
        "CRD defaults"
    )
    status = waiting["status"]
    assert status["phase"] == "Pending"
    replicas_ready = condition(waiting, "ReplicasReady")
    assert (replicas_ready["status"], replicas_ready["reason"]) == ("False", "NoReadyCoordinator")
    assert replicas_ready["message"].startswith(
        f"no coordinator TarsReplica is ready in namespace {namespace}"
    )
    assert not {"stage", "progress", "currentFile", "startTime"} & set(status), (
        "no invented progress"
    )
    assert not any((status.get("statistics") or {}).values())
    wait_for(
        lambda: "NoReadyCoordinator" in reasons(kubectl, namespace, "first"), "the waiting Event"
    )

    # A coordinator appears and its pod becomes ready: the run notices, untouched, and
    # names the worker roles it still waits for.
    # The coordinator's pods use their own service account (the chart creates it).
    kubectl("create", "serviceaccount", "-n", namespace, "tars-coordinator")
    apply(kubectl, namespace, replica_manifest("coordinator", "coordinator"))
    wait_for(lambda: mark_pods_ready(kubectl, namespace, "coordinator") == 1, "the coordinator pod")
    acknowledged = wait_until(
        lambda: run(kubectl, namespace, "first"),
        lambda current: condition(current, "ReplicasReady").get("reason") == "NoReadyWorkers",
        "the run to see the ready coordinator",
    )
    assert phase(acknowledged) == "Pending"
    assert "analyzer, generator, tester" in condition(acknowledged, "ReplicasReady")["message"]
    assert condition(acknowledged, "Progressing")["status"] == "False"

    patch(kubectl, namespace, "selfcodingrun/first", {"spec": {"stop": True}})
    stopped = wait_until(
        lambda: run(kubectl, namespace, "first"),
        lambda current: phase(current) == "Stopped",
        "phase Stopped",
    )
    assert stopped["status"]["completionTime"]
    complete = condition(stopped, "Complete")
    assert (complete["status"], complete["reason"]) == ("True", "Stopped")
    wait_for(lambda: "Stopped" in reasons(kubectl, namespace, "first"), "the Stopped Event")

    unstop = kubectl(
        "patch", "-n", namespace, "selfcodingrun/first", "--type=merge", "-p", '{"spec": {"stop": false}}',
        check=False,
    )  # fmt: skip
    assert unstop.returncode != 0 and "spec.stop" in unstop.stderr
    kubectl("delete", "-n", namespace, "selfcodingrun/first", "--wait=true", "--timeout=60s")
    assert run(kubectl, namespace, "first") is None


def one_pod_made_ready(kubectl: Kubectl, namespace: str, instance: str) -> Callable[[], bool]:
    return lambda: mark_pods_ready(kubectl, namespace, instance) == 1


def test_a_run_with_a_test_image_waits_for_its_own_tester_which_goes_when_it_ends(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    kubectl("create", "serviceaccount", "-n", namespace, "tars-coordinator")
    for role in ("coordinator", "analyzer", "generator", "tester"):
        apply(kubectl, namespace, replica_manifest(role, role))
        wait_for(one_pod_made_ready(kubectl, namespace, role), f"the {role} pod")
    imaged = run_manifest("imaged")
    imaged["spec"]["testEnvironment"] = {"image": "localhost/project-tests:1"}
    apply(kubectl, namespace, imaged)
    owner = wait_for(lambda: run(kubectl, namespace, "imaged"), "the run")

    tester = wait_for(lambda: replica(kubectl, namespace, "imaged-tester"), "the run's tester")
    assert tester["metadata"]["labels"]["tars.dev/run"] == "imaged"
    assert [(o["kind"], o["uid"]) for o in tester["metadata"]["ownerReferences"]] == [
        ("SelfCodingRun", owner["metadata"]["uid"])
    ]
    assert (tester["spec"]["role"], tester["spec"]["replicas"]) == ("tester", 1)
    assert tester["spec"]["image"] == "localhost/project-tests:1"
    created = wait_for(lambda: deployment(kubectl, namespace, "imaged-tester"), "its Deployment")
    assert created["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "localhost/project-tests:1"
    )
    # The shared tester is ready, and does not count for this run.
    waiting = wait_until(
        lambda: run(kubectl, namespace, "imaged"),
        lambda current: condition(current, "ReplicasReady").get("reason") == "NoReadyRunTester",
        "the run to wait for its own tester",
    )
    assert phase(waiting) == "Pending"
    assert condition(waiting, "ReplicasReady")["message"] == (
        "the run's own tester, TarsReplica imaged-tester of image localhost/project-tests:1, "
        f"is not ready in namespace {namespace}"
    )
    wait_for(lambda: mark_pods_ready(kubectl, namespace, "imaged-tester") == 1, "its pod")
    wait_until(
        lambda: run(kubectl, namespace, "imaged"),
        lambda current: condition(current, "ReplicasReady").get("status") == "True",
        "the run to see its own tester ready",
    )

    # Ended (here stopped before any coordinator took it): the tester and its children go.
    patch(kubectl, namespace, "selfcodingrun/imaged", {"spec": {"stop": True}})
    wait_for(
        lambda: (
            replica(kubectl, namespace, "imaged-tester") is None
            and deployment(kubectl, namespace, "imaged-tester") is None
        ),
        "the ended run's tester and its Deployment to go",
    )
    assert phase(run(kubectl, namespace, "imaged") or {}) == "Stopped"

    # Deleting a run removes its tester too: the garbage collector follows the owner.
    apply(kubectl, namespace, run_manifest("deleted") | {"spec": imaged["spec"]})
    wait_for(lambda: replica(kubectl, namespace, "deleted-tester"), "the second run's tester")
    kubectl("delete", "-n", namespace, "selfcodingrun/deleted", "--wait=true", "--timeout=60s")
    wait_for(
        lambda: replica(kubectl, namespace, "deleted-tester") is None,
        "the deleted run's tester to be collected",
    )


def test_restart_after_sigkill_converges_without_duplicates(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    for name in ("analyzer", "generator"):
        apply(kubectl, namespace, replica_manifest(name, name))
    for name in ("analyzer", "generator"):
        wait_for(
            lambda name=name: get_json(kubectl, "-n", namespace, "service", name),
            f"the {name} Service",
        )

    operator.kill()
    patch(kubectl, namespace, "tarsreplica/analyzer", {"spec": {"replicas": 4}})
    kubectl("delete", "-n", namespace, "service/generator")
    apply(kubectl, namespace, replica_manifest("tester", "tester"))
    apply(kubectl, namespace, run_manifest("while-down"))
    operator.start()

    desired_pods(kubectl, namespace, "analyzer", 4)
    wait_for(
        lambda: get_json(kubectl, "-n", namespace, "service", "generator"), "the deleted Service"
    )
    wait_for(
        lambda: deployment(kubectl, namespace, "tester"), "children of a replica created while down"
    )
    wait_until(
        lambda: run(kubectl, namespace, "while-down"),
        lambda current: condition(current, "ReplicasReady").get("reason") == "NoReadyCoordinator",
        "the run created while down",
    )
    expected = ["analyzer", "generator", "tester"]
    wait_for(
        lambda: children(kubectl, namespace, "services") == expected, "exactly one Service each"
    )
    assert children(kubectl, namespace, "deployments") == expected
    analyzer = wait_until(
        lambda: replica(kubectl, namespace, "analyzer"),
        lambda current: (current.get("status") or {}).get("observedGeneration") == 2,
        "the analyzer's status to observe generation 2",
    )
    assert analyzer["metadata"]["generation"] == 2


def test_liveness_and_metrics(kubectl: Kubectl, namespace: str, operator: OperatorProcess) -> None:
    apply(kubectl, namespace, replica_manifest("analyzer", "analyzer"))
    wait_for(lambda: deployment(kubectl, namespace, "analyzer"), "the Deployment")
    assert http_get(operator.liveness_url)[0] == 200
    marker = 'tars_operator_reconciles_total{kind="TarsReplica",outcome="changed"}'
    text = wait_until(
        lambda: http_get(operator.metrics_url)[1], lambda text: marker in text, "the counter"
    )
    assert "tars_operator_reconcile_duration_seconds_bucket" in text
    assert "tars_operator_errors" in text
    assert f"watching namespaces {namespace}" in operator.log()


def test_specs_the_children_cannot_take_are_reported_not_retried_forever(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    apply(kubectl, namespace, replica_manifest("1st-analyzer", "analyzer"))
    bad_affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": "x"}
        }
    }
    apply(kubectl, namespace, replica_manifest("generator", "generator", affinity=bad_affinity))
    for name, reason, detail in (
        ("1st-analyzer", "InvalidSpec", "cannot name a Service"),
        ("generator", "ApplyFailed", "nodeSelectorTerms"),
    ):
        failed = wait_until(
            lambda name=name: replica(kubectl, namespace, name),
            lambda current, reason=reason: condition(current, "Ready").get("reason") == reason,
            f"{name} to report {reason}",
        )
        assert phase(failed) == "Degraded"
        assert detail in condition(failed, "Ready")["message"]
        wait_for(
            lambda name=name, reason=reason: reason in reasons(kubectl, namespace, name),
            f"the {reason} Event",
        )
        assert deployment(kubectl, namespace, name) is None
