"""The pure TarsReplica -> Deployment/Service builders and Deployment -> status mapping."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from tars_api.meta import ConditionStatus, find_condition
from tars_api.replica import (
    ReplicaPhase,
    ReplicaVolume,
    ResourceRequirements,
    TarsReplica,
    TarsReplicaStatus,
)
from tars_api.vocabulary import EngineName, Role
from tars_operator import replicas
from tars_operator.config import OperatorConfig
from tars_operator.config import TesterIsolation as Isolation

CONFIG = OperatorConfig(ollama_host="http://ollama.tars.svc:11434")
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def replica(name: str = "generator", role: Role = Role.generator, **spec: Any) -> TarsReplica:
    built = TarsReplica.build(name, role, namespace="work", **spec)
    built.metadata.uid = "uid-1"
    built.metadata.generation = 4
    return built


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    containers = manifest["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        item["name"]: item.get("value", item.get("valueFrom"))
        for item in container(manifest)["env"]
    }


def test_deployment_is_named_labelled_and_owned_by_the_replica() -> None:
    deployment = replicas.desired_deployment(replica(), CONFIG)
    metadata = deployment["metadata"]
    assert (metadata["name"], metadata["namespace"]) == ("generator", "work")
    assert metadata["labels"] == {
        "app.kubernetes.io/name": "tars-replica",
        "app.kubernetes.io/instance": "generator",
        "app.kubernetes.io/component": "generator",
        "app.kubernetes.io/managed-by": "tars-operator",
    }
    assert metadata["ownerReferences"] == [
        {
            "apiVersion": "tars.dev/v1alpha1",
            "kind": "TarsReplica",
            "name": "generator",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert metadata["annotations"][replicas.GENERATION_ANNOTATION] == "4"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {
        "app.kubernetes.io/name": "tars-replica",
        "app.kubernetes.io/instance": "generator",
    }
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_container_serves_the_role_with_probes_and_operator_defaults() -> None:
    deployment = replicas.desired_deployment(replica(replicas=3), CONFIG)
    assert deployment["spec"]["replicas"] == 3
    main = container(deployment)
    assert main["image"] == CONFIG.image
    assert [main["command"][0], *main["args"]] == [
        "tars-replica", "serve", "--role", "generator", "--host", "0.0.0.0", "--port", "8080",
    ]  # fmt: skip
    assert main["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = env_of(deployment)
    assert env["TARS_ENGINE"] == "static"
    assert env["TARS_MODEL"] == "llama3"
    assert env["OLLAMA_HOST"] == "http://ollama.tars.svc:11434"
    assert env["TARS_SCRATCH_DIR"] == CONFIG.scratch_dir
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert main["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    }


def test_spec_overrides_engine_model_image_resources_env_and_scheduling() -> None:
    custom = replica(
        engine=EngineName.ollama,
        model="qwen2.5-coder",
        image="registry.example/tars:1",
        resources=ResourceRequirements(limits={"cpu": "2", "memory": "4Gi"}),
        env=[{"name": "TARS_MODEL", "value": "from-env"}, {"name": "EXTRA", "value": "1"}],
        node_selector={"disk": "ssd"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        affinity={"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
    )
    deployment = replicas.desired_deployment(custom, CONFIG)
    env = env_of(deployment)
    assert env["TARS_ENGINE"] == "ollama"
    assert env["TARS_MODEL"] == "from-env"
    assert env["EXTRA"] == "1"
    names = [item["name"] for item in container(deployment)["env"]]
    assert len(names) == len(set(names)), "server-side apply refuses duplicate env names"
    assert container(deployment)["image"] == "registry.example/tars:1"
    assert container(deployment)["resources"] == {"limits": {"cpu": "2", "memory": "4Gi"}}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"disk": "ssd"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["affinity"] == {
        "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}
    }


def test_pods_are_locked_down_and_only_the_coordinator_gets_a_token() -> None:
    for role in (Role.analyzer, Role.generator, Role.tester):
        pod = replicas.desired_deployment(replica(role.value, role), CONFIG)["spec"]["template"][
            "spec"
        ]
        assert pod["automountServiceAccountToken"] is False
        assert "serviceAccountName" not in pod
    pod = replicas.desired_deployment(replica("coordinator", Role.coordinator), CONFIG)["spec"][
        "template"
    ]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == CONFIG.coordinator_service_account
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": CONFIG.run_as_user,
        "runAsGroup": CONFIG.run_as_group,
        "fsGroup": CONFIG.run_as_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    main = pod["containers"][0]
    assert main["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert main["volumeMounts"] == [{"name": "scratch", "mountPath": CONFIG.scratch_dir}]
    assert pod["volumes"] == [
        {"name": "scratch", "emptyDir": {"sizeLimit": CONFIG.scratch_size_limit}}
    ]


def pod_spec(role: Role, config: OperatorConfig = CONFIG) -> dict[str, Any]:
    deployment = replicas.desired_deployment(replica(role.value, role), config)
    return deployment["spec"]["template"]["spec"]


def test_testers_get_a_user_namespace_for_bwrap_and_the_other_roles_do_not() -> None:
    tester = pod_spec(Role.tester)
    assert tester["hostUsers"] is False
    assert tester["securityContext"]["seccompProfile"] == {"type": "Unconfined"}
    assert tester["containers"][0]["securityContext"]["procMount"] == "Unmasked"
    assert tester["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    for role in (Role.analyzer, Role.generator, Role.coordinator):
        other = pod_spec(role)
        assert "hostUsers" not in other
        assert other["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "procMount" not in other["containers"][0]["securityContext"]


def test_tester_isolation_pod_keeps_the_node_defaults() -> None:
    tester = pod_spec(Role.tester, CONFIG.model_copy(update={"tester_isolation": Isolation.pod}))
    assert "hostUsers" not in tester
    assert tester["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "procMount" not in tester["containers"][0]["securityContext"]


def test_testers_alone_trust_the_package_index_ca_bundle() -> None:
    config = OperatorConfig.model_validate(
        {"packageIndexCa": {"configMap": "corporate-ca", "key": "bundle.pem"}}
    )
    tester = pod_spec(Role.tester, config)
    assert tester["volumes"][-1] == {
        "name": "package-index-ca",
        "configMap": {"name": "corporate-ca", "items": [{"key": "bundle.pem", "path": "ca.crt"}]},
    }
    main = tester["containers"][0]
    assert main["volumeMounts"][-1] == {
        "name": "package-index-ca",
        "mountPath": "/etc/tars/package-index-ca",
        "readOnly": True,
    }
    values = {entry["name"]: entry.get("value") for entry in main["env"]}
    for variable in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        assert values[variable] == "/etc/tars/package-index-ca/ca.crt"
    for role in (Role.analyzer, Role.generator, Role.coordinator):
        other = pod_spec(role, config)
        assert [volume["name"] for volume in other["volumes"]] == ["scratch"]
        assert "PIP_CERT" not in {entry["name"] for entry in other["containers"][0]["env"]}


def test_suspend_scales_the_deployment_to_zero() -> None:
    deployment = replicas.desired_deployment(replica(replicas=5, suspend=True), CONFIG)
    assert deployment["spec"]["replicas"] == 0
    assert deployment["metadata"]["annotations"][replicas.SUSPENDED_ANNOTATION] == "true"


def test_service_selects_the_pods_on_the_named_port() -> None:
    service = replicas.desired_service(replica(), CONFIG)
    assert service["metadata"]["name"] == "generator"
    assert service["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert service["spec"]["selector"] == replicas.selector_labels("generator")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]


def test_a_name_that_cannot_name_a_service_is_refused_with_the_reason() -> None:
    with pytest.raises(replicas.InvalidReplica, match="cannot name a Service"):
        replicas.desired_service(replica("1st-generator"), CONFIG)


def test_owner_of_finds_only_a_controlling_tars_replica() -> None:
    deployment = replicas.desired_deployment(replica(), CONFIG)
    assert replicas.owner_of(deployment) == replicas.OwnerRef("work", "generator", "uid-1")
    deployment["metadata"]["ownerReferences"][0]["controller"] = False
    assert replicas.owner_of(deployment) is None


def applied(spec_replicas: int = 2, suspend: bool = False, **status: Any) -> dict[str, Any]:
    """A Deployment as the API server returns it after the operator applied it."""
    deployment = replicas.desired_deployment(
        replica(replicas=spec_replicas, suspend=suspend), CONFIG
    )
    deployment["metadata"]["generation"] = 1
    deployment["status"] = status
    return deployment


def test_status_of_a_fresh_deployment_is_pending_and_progressing() -> None:
    status = replicas.replica_status(applied(), None, CONFIG, now=T0)
    assert status.phase is ReplicaPhase.pending
    assert (status.replicas, status.ready_replicas) == (0, 0)
    assert status.observed_generation == 4
    assert status.endpoint == "http://generator.work.svc:8080"
    assert (
        status.selector
        == "app.kubernetes.io/instance=generator,app.kubernetes.io/name=tars-replica"
    )
    ready = find_condition(status.conditions, "Ready")
    progressing = find_condition(status.conditions, "Progressing")
    assert ready is not None and progressing is not None
    assert (ready.status, ready.reason, ready.message) == (
        ConditionStatus.false,
        "ReplicasNotReady",
        "0/2 ready",
    )
    assert (progressing.status, progressing.reason) == (ConditionStatus.true, "RollingOut")
    assert ready.observed_generation == progressing.observed_generation == 4


def test_status_follows_the_rollout_to_ready_and_keeps_transition_times() -> None:
    partly = applied(observedGeneration=1, replicas=2, updatedReplicas=2, readyReplicas=1)
    first = replicas.replica_status(partly, None, CONFIG, now=T0)
    assert first.phase is ReplicaPhase.progressing
    complete = applied(
        observedGeneration=1, replicas=2, updatedReplicas=2, readyReplicas=2, availableReplicas=2
    )
    later = T0 + timedelta(minutes=1)
    second = replicas.replica_status(complete, first, CONFIG, now=later)
    assert second.phase is ReplicaPhase.ready
    ready = find_condition(second.conditions, "Ready")
    assert ready is not None and ready.is_true and ready.last_transition_time == later
    third = replicas.replica_status(complete, second, CONFIG, now=later + timedelta(minutes=1))
    assert third.to_dict() == second.to_dict(), "an unchanged Deployment must not change the status"
    assert replicas.replica_transition(second, third) is None
    transition = replicas.replica_transition(first, second)
    assert transition is not None and (transition.type, transition.reason) == ("Normal", "Ready")


def test_a_ready_replica_losing_pods_is_degraded_and_warned_about() -> None:
    ready = replicas.replica_status(
        applied(observedGeneration=1, replicas=2, updatedReplicas=2, readyReplicas=2),
        None,
        CONFIG,
        now=T0,
    )
    lost = replicas.replica_status(
        applied(observedGeneration=1, replicas=2, updatedReplicas=2, readyReplicas=1),
        ready,
        CONFIG,
        now=T0,
    )
    assert lost.phase is ReplicaPhase.degraded
    transition = replicas.replica_transition(ready, lost)
    assert transition is not None and transition.type == "Warning"


def test_a_failed_rollout_is_degraded_with_the_deployments_message() -> None:
    failed = applied(
        observedGeneration=1,
        replicas=2,
        updatedReplicas=2,
        conditions=[
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "generator-abc" has timed out progressing.',
            }
        ],
    )
    status = replicas.replica_status(failed, None, CONFIG, now=T0)
    assert status.phase is ReplicaPhase.degraded
    progressing = find_condition(status.conditions, "Progressing")
    assert progressing is not None and progressing.reason == "RolloutFailed"
    assert "timed out" in progressing.message


def test_a_suspended_replica_says_so() -> None:
    status = replicas.replica_status(
        applied(suspend=True, observedGeneration=1), None, CONFIG, now=T0
    )
    assert status.phase is ReplicaPhase.suspended
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None and (ready.status, ready.reason) == (
        ConditionStatus.false,
        "Suspended",
    )


def test_is_ready_needs_a_ready_condition_and_a_ready_pod() -> None:
    complete = applied(observedGeneration=1, replicas=2, updatedReplicas=2, readyReplicas=2)
    assert replicas.replica_status(complete, None, CONFIG, now=T0).is_ready
    assert not replicas.replica_status(applied(), None, CONFIG, now=T0).is_ready
    assert not TarsReplicaStatus().is_ready


def test_failed_status_keeps_the_observed_generation_behind() -> None:
    before = replicas.replica_status(applied(), None, CONFIG, now=T0)
    failed = replicas.failed_status(before, "ApplyFailed", "forbidden", 5, now=T0)
    assert failed.phase is ReplicaPhase.degraded
    assert failed.observed_generation == 4
    ready = find_condition(failed.conditions, "Ready")
    assert ready is not None and (ready.reason, ready.message, ready.observed_generation) == (
        "ApplyFailed",
        "forbidden",
        5,
    )


def test_pods_that_cannot_be_created_make_the_replica_degraded_with_the_reason() -> None:
    message = 'pods "coordinator-7" is forbidden: serviceaccount "tars-coordinator" not found'
    failing = applied(
        observedGeneration=1,
        conditions=[
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": message,
            }
        ],
    )
    status = replicas.replica_status(failing, None, CONFIG, now=T0)
    assert status.phase is ReplicaPhase.degraded
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None and (ready.reason, ready.message) == ("PodsNotCreated", message)
    assert replicas.replica_transition(None, status) is None, "the first phase is no transition"
    pending = replicas.replica_status(applied(), None, CONFIG, now=T0)
    transition = replicas.replica_transition(pending, status)
    assert transition is not None and transition.type == "Warning" and message in transition.message


def test_coordinator_volumes_are_mounted_and_named_in_tars_volumes() -> None:
    volumes = [
        ReplicaVolume(name="sample", host_path="/srv/tars/sample-project"),
        ReplicaVolume(name="work", claim_name="work-claim", mount_path="/work"),
    ]
    deployment = replicas.desired_deployment(
        replica("coordinator", Role.coordinator, volumes=volumes), CONFIG
    )
    pod = deployment["spec"]["template"]["spec"]
    assert {
        "name": "vol-sample",
        "hostPath": {"path": "/srv/tars/sample-project", "type": "Directory"},
    } in pod["volumes"]
    assert {"name": "vol-work", "persistentVolumeClaim": {"claimName": "work-claim"}} in pod[
        "volumes"
    ]
    mounts = {mount["name"]: mount["mountPath"] for mount in container(deployment)["volumeMounts"]}
    assert mounts["vol-sample"] == "/srv/tars/sample-project" and mounts["vol-work"] == "/work"
    assert json.loads(env_of(deployment)["TARS_VOLUMES"]) == {
        "claim:work-claim": "/work",
        "hostPath:/srv/tars/sample-project": "/srv/tars/sample-project",
    }


def test_a_volume_needs_exactly_one_location() -> None:
    with pytest.raises(ValidationError, match="exactly one of claimName or hostPath"):
        ReplicaVolume(name="both", host_path="/a", claim_name="c")
