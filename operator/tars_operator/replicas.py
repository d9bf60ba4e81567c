"""TarsReplica -> Deployment + Service, and Deployment -> TarsReplica status. Pure functions.

Everything the status needs is read from the Deployment the operator applied: the
replica's generation and suspension travel as annotations on it, so the status can be
computed from one watched object without re-reading the replica.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tars_api.meta import API_VERSION, Condition, find_condition, set_condition, set_conditions
from tars_api.names import (
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY_OPERATOR,
    REPLICA_PORT_NAME,
    ReplicaEnv,
)
from tars_api.replica import (
    ReplicaConditionType,
    ReplicaPhase,
    ReplicaReason,
    ReplicaVolume,
    TarsReplica,
    TarsReplicaStatus,
)
from tars_api.vocabulary import Role

from tars_operator.config import OperatorConfig, TesterIsolation

Manifest = dict[str, Any]

APP_NAME = "tars-replica"
GENERATION_ANNOTATION = "tars.dev/replica-generation"
SUSPENDED_ANNOTATION = "tars.dev/suspended"
SCRATCH_VOLUME = "scratch"
PACKAGE_INDEX_CA_VOLUME = "package-index-ca"
PACKAGE_INDEX_CA_DIR = "/etc/tars/package-index-ca"
PACKAGE_INDEX_CA_NAME = "ca.crt"
PACKAGE_INDEX_CA_FILE = f"{PACKAGE_INDEX_CA_DIR}/{PACKAGE_INDEX_CA_NAME}"
# Where pip, Python's ssl module and requests look for the CA bundle, in that order.
CA_BUNDLE_VARIABLES = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
# Prefixed so a volume of the spec can never be named like the scratch volume.
USER_VOLUME_PREFIX = "vol-"
# A Service name is a DNS-1035 label; the children carry the replica's own name.
TARS_REPLICA_KIND = TarsReplica.resource.kind
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


class InvalidReplica(ValueError):
    """The replica cannot be turned into children; retrying will not help."""


def child_name(replica: TarsReplica) -> str:
    name = replica.name
    if not _DNS_1035_LABEL.match(name):
        raise InvalidReplica(
            f"TarsReplica name {name!r} cannot name a Service: use at most 63 lowercase letters, "
            "digits and '-', starting with a letter"
        )
    return name


def selector_labels(name: str) -> dict[str, str]:
    """Labels the Deployment selects pods by: fixed for the replica's lifetime (selectors are immutable)."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: name}


def selector_string(name: str) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(selector_labels(name).items()))


def object_labels(name: str, role: Role) -> dict[str, str]:
    return {
        **selector_labels(name),
        LABEL_COMPONENT: role.value,
        LABEL_MANAGED_BY: MANAGED_BY_OPERATOR,
    }


def endpoint(name: str, namespace: str, config: OperatorConfig) -> str:
    return f"http://{name}.{namespace}.svc:{config.port}"


def desired_replicas(replica: TarsReplica) -> int:
    return 0 if replica.spec.suspend else replica.spec.replicas


def _metadata(replica: TarsReplica, annotations: dict[str, str] | None = None) -> Manifest:
    name = child_name(replica)
    metadata: Manifest = {
        "name": name,
        "namespace": replica.metadata.namespace,
        "labels": object_labels(name, replica.spec.role),
        "ownerReferences": [replica.owner_reference().to_dict()],
    }
    if annotations:
        metadata["annotations"] = annotations
    return metadata


def _environment(replica: TarsReplica, config: OperatorConfig) -> list[Manifest]:
    """The container's env: the operator's settings first, the replica's own `env` overriding by name."""
    spec = replica.spec
    values: dict[str, str] = {
        ReplicaEnv.role: spec.role.value,
        ReplicaEnv.engine: (spec.engine or config.engine).value,
        ReplicaEnv.model: spec.model or config.model,
        ReplicaEnv.scratch_dir: config.scratch_dir,
        # The root filesystem is read-only: tools that write caches or temp files go to scratch.
        "HOME": config.scratch_dir,
        "TMPDIR": config.scratch_dir,
    }
    if config.ollama_host:
        values[ReplicaEnv.ollama_host] = config.ollama_host
    if spec.role is Role.tester and config.package_index_ca is not None:
        values.update(dict.fromkeys(CA_BUNDLE_VARIABLES, PACKAGE_INDEX_CA_FILE))
    if spec.role is Role.coordinator and spec.volumes:
        # The coordinator finds a run's volume source by the key the run names it with.
        values[ReplicaEnv.volumes] = json.dumps(
            {volume.source_key: volume.mount_location for volume in spec.volumes}, sort_keys=True
        )
    field_refs = {
        ReplicaEnv.pod_name: "metadata.name",
        ReplicaEnv.pod_namespace: "metadata.namespace",
        ReplicaEnv.pod_ip: "status.podIP",
    }
    overrides = {variable.name: variable.value for variable in spec.env}
    environment: list[Manifest] = []
    for variable, value in values.items():
        environment.append({"name": variable, "value": overrides.pop(variable, value)})
    for variable, path in field_refs.items():
        if variable in overrides:
            environment.append({"name": variable, "value": overrides.pop(variable)})
        else:
            environment.append({"name": variable, "valueFrom": {"fieldRef": {"fieldPath": path}}})
    environment.extend({"name": variable, "value": value} for variable, value in overrides.items())
    return environment


def _resources(replica: TarsReplica, config: OperatorConfig) -> Manifest:
    resources = replica.spec.resources or config.resources_for(replica.spec.role)
    return {
        part: {key: str(quantity) for key, quantity in quantities.items()}
        for part, quantities in (("requests", resources.requests), ("limits", resources.limits))
        if quantities
    }


def _volume(volume: ReplicaVolume) -> Manifest:
    name = f"{USER_VOLUME_PREFIX}{volume.name}"
    if volume.claim_name:
        return {"name": name, "persistentVolumeClaim": {"claimName": volume.claim_name}}
    return {"name": name, "hostPath": {"path": volume.host_path, "type": "Directory"}}


def _pod_spec(replica: TarsReplica, config: OperatorConfig) -> Manifest:
    spec = replica.spec
    is_coordinator = spec.role is Role.coordinator
    container: Manifest = {
        "name": "replica",
        "image": spec.image or config.image_for(spec.role),
        "imagePullPolicy": config.image_pull_policy,
        "command": ["tars-replica"],
        "args": [
            "serve",
            "--role",
            spec.role.value,
            # Every address of the pod's own network namespace: the pod IP for Services and
            # probes, and loopback, where `kubectl port-forward` connects.
            "--host",
            "0.0.0.0",
            "--port",
            str(config.port),
        ],
        "ports": [{"name": REPLICA_PORT_NAME, "containerPort": config.port, "protocol": "TCP"}],
        "env": _environment(replica, config),
        "readinessProbe": config.readiness_probe.to_k8s(REPLICA_PORT_NAME),
        "livenessProbe": config.liveness_probe.to_k8s(REPLICA_PORT_NAME),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": SCRATCH_VOLUME, "mountPath": config.scratch_dir},
            *(
                {"name": f"{USER_VOLUME_PREFIX}{volume.name}", "mountPath": volume.mount_location}
                for volume in spec.volumes
            ),
        ],
    }
    resources = _resources(replica, config)
    if resources:
        container["resources"] = resources
    trusted = config.package_index_ca if spec.role is Role.tester else None
    if trusted is not None:
        container["volumeMounts"].append(
            {
                "name": PACKAGE_INDEX_CA_VOLUME,
                "mountPath": PACKAGE_INDEX_CA_DIR,
                "readOnly": True,
            }
        )
    namespaced_tester = (
        spec.role is Role.tester and config.tester_isolation is TesterIsolation.user_namespace
    )
    if namespaced_tester:
        container["securityContext"]["procMount"] = "Unmasked"
    pod: Manifest = {
        # Only the coordinator talks to the API server (it reads TarsReplica status).
        "automountServiceAccountToken": is_coordinator,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": config.run_as_user,
            "runAsGroup": config.run_as_group,
            "fsGroup": config.run_as_group,
            "seccompProfile": {"type": "Unconfined" if namespaced_tester else "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": SCRATCH_VOLUME, "emptyDir": {"sizeLimit": config.scratch_size_limit}},
            *(_volume(volume) for volume in spec.volumes),
        ],
    }
    if trusted is not None:
        pod["volumes"].append(
            {
                "name": PACKAGE_INDEX_CA_VOLUME,
                "configMap": {
                    "name": trusted.config_map,
                    "items": [{"key": trusted.key, "path": PACKAGE_INDEX_CA_NAME}],
                },
            }
        )
    if is_coordinator:
        pod["serviceAccountName"] = config.coordinator_service_account
    if namespaced_tester:
        pod["hostUsers"] = False
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [toleration.to_dict() for toleration in spec.tolerations]
    if spec.affinity:
        pod["affinity"] = spec.affinity
    return pod


def desired_deployment(replica: TarsReplica, config: OperatorConfig) -> Manifest:
    name = child_name(replica)
    annotations = {
        GENERATION_ANNOTATION: str(replica.metadata.generation or 0),
        SUSPENDED_ANNOTATION: "true" if replica.spec.suspend else "false",
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(replica, annotations),
        "spec": {
            "replicas": desired_replicas(replica),
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(name)},
            "template": {
                "metadata": {"labels": object_labels(name, replica.spec.role)},
                "spec": _pod_spec(replica, config),
            },
        },
    }


def desired_service(replica: TarsReplica, config: OperatorConfig) -> Manifest:
    name = child_name(replica)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(replica),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name),
            "ports": [
                {
                    "name": REPLICA_PORT_NAME,
                    "port": config.port,
                    "targetPort": REPLICA_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


@dataclass(frozen=True)
class OwnerRef:
    """The TarsReplica a child belongs to."""

    namespace: str
    name: str
    uid: str

    def event_target(self) -> Manifest:
        """Enough of the replica for kopf to post an Event about it."""
        return {
            "apiVersion": API_VERSION,
            "kind": TARS_REPLICA_KIND,
            "metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid},
        }


def owner_of(child: Manifest) -> OwnerRef | None:
    """The controlling TarsReplica of a child, if a TarsReplica controls it."""
    metadata = child.get("metadata", {})
    for reference in metadata.get("ownerReferences") or []:
        if (
            reference.get("kind") == TARS_REPLICA_KIND
            and reference.get("controller")
            and reference.get("apiVersion", "").split("/")[0] == API_VERSION.split("/")[0]
        ):
            return OwnerRef(metadata["namespace"], reference["name"], reference["uid"])
    return None


@dataclass(frozen=True)
class RolloutState:
    """What the Deployment says, in the terms the replica's status uses."""

    desired: int
    replicas: int
    ready: int
    updated: int
    observed: bool
    suspended: bool
    rollout_failure: str | None
    """Set when the rollout exceeded its progress deadline."""
    pod_failure: str | None
    """Set when pods cannot be created (quota, admission, a missing service account)."""

    @classmethod
    def of(cls, deployment: Manifest) -> RolloutState:
        metadata = deployment.get("metadata", {})
        annotations = metadata.get("annotations") or {}
        status = deployment.get("status") or {}
        conditions = {entry.get("type"): entry for entry in status.get("conditions") or []}
        progressing = conditions.get("Progressing") or {}
        replica_failure = conditions.get("ReplicaFailure") or {}
        rollout_failure = None
        if progressing.get("reason") == "ProgressDeadlineExceeded":
            rollout_failure = progressing.get("message") or "the rollout exceeded its deadline"
        pod_failure = None
        if replica_failure.get("status") == "True":
            pod_failure = replica_failure.get("message") or "pods cannot be created"
        return cls(
            desired=int((deployment.get("spec") or {}).get("replicas", 1)),
            replicas=int(status.get("replicas") or 0),
            ready=int(status.get("readyReplicas") or 0),
            updated=int(status.get("updatedReplicas") or 0),
            observed=int(status.get("observedGeneration") or 0)
            >= int(metadata.get("generation") or 0),
            suspended=annotations.get(SUSPENDED_ANNOTATION) == "true",
            rollout_failure=rollout_failure,
            pod_failure=pod_failure,
        )

    @property
    def complete(self) -> bool:
        """Every desired pod runs the current template and no old pod is left."""
        return self.observed and self.updated >= self.desired and self.replicas == self.desired

    @property
    def all_ready(self) -> bool:
        return self.complete and self.ready >= self.desired


def _pods(count: int) -> str:
    return f"{count} pod" if count == 1 else f"{count} pods"


def replica_status(
    deployment: Manifest,
    previous: TarsReplicaStatus | None,
    config: OperatorConfig,
    *,
    now: datetime,
) -> TarsReplicaStatus:
    """The replica's status given its Deployment and the status it had before."""
    metadata = deployment["metadata"]
    name, namespace = metadata["name"], metadata["namespace"]
    generation = int((metadata.get("annotations") or {}).get(GENERATION_ANNOTATION, "0"))
    rollout = RolloutState.of(deployment)
    previous = previous or TarsReplicaStatus()
    progress = f"{rollout.ready}/{rollout.desired} ready"

    if rollout.suspended:
        ready = Condition.make(
            ReplicaConditionType.ready,
            False,
            ReplicaReason.suspended,
            "spec.suspend is true: scaled to zero",
            at=now,
        )
    elif rollout.all_ready:
        reason = (
            ReplicaReason.scaled_to_zero
            if rollout.desired == 0
            else ReplicaReason.all_replicas_ready
        )
        ready = Condition.make(ReplicaConditionType.ready, True, reason, progress, at=now)
    elif rollout.pod_failure is not None:
        ready = Condition.make(
            ReplicaConditionType.ready,
            False,
            ReplicaReason.pods_not_created,
            rollout.pod_failure,
            at=now,
        )
    else:
        ready = Condition.make(
            ReplicaConditionType.ready, False, ReplicaReason.replicas_not_ready, progress, at=now
        )

    if rollout.rollout_failure is not None:
        progressing = Condition.make(
            ReplicaConditionType.progressing,
            False,
            ReplicaReason.rollout_failed,
            rollout.rollout_failure,
            at=now,
        )
    elif rollout.all_ready or (rollout.suspended and rollout.complete):
        progressing = Condition.make(
            ReplicaConditionType.progressing,
            False,
            ReplicaReason.rollout_complete,
            progress,
            at=now,
        )
    elif not rollout.complete:
        message = f"{rollout.updated}/{rollout.desired} updated, {_pods(rollout.replicas)} exist, {progress}"
        progressing = Condition.make(
            ReplicaConditionType.progressing, True, ReplicaReason.rolling_out, message, at=now
        )
    else:
        progressing = Condition.make(
            ReplicaConditionType.progressing, True, ReplicaReason.waiting_for_pods, progress, at=now
        )

    was_serving = previous.phase in (ReplicaPhase.ready, ReplicaPhase.degraded)
    same_spec = previous.observed_generation == generation
    if rollout.suspended:
        phase = ReplicaPhase.suspended
    elif (
        rollout.rollout_failure is not None
        or rollout.pod_failure is not None
        or (was_serving and same_spec and not rollout.all_ready)
    ):
        phase = ReplicaPhase.degraded
    elif rollout.all_ready:
        phase = ReplicaPhase.ready
    elif rollout.ready > 0:
        phase = ReplicaPhase.progressing
    else:
        phase = ReplicaPhase.pending

    conditions = set_conditions(previous.conditions, ready, progressing, generation=generation)
    return TarsReplicaStatus(
        phase=phase,
        replicas=rollout.replicas,
        ready_replicas=rollout.ready,
        selector=selector_string(name),
        endpoint=endpoint(name, namespace, config),
        capabilities=previous.capabilities,
        conditions=conditions,
        observed_generation=generation,
    )


def failed_status(
    previous: TarsReplicaStatus | None, reason: str, message: str, generation: int, *, now: datetime
) -> TarsReplicaStatus:
    """The status of a replica whose spec cannot be applied; observedGeneration stays behind."""
    previous = previous or TarsReplicaStatus()
    conditions = list(previous.conditions)
    for condition_type in (ReplicaConditionType.ready, ReplicaConditionType.progressing):
        failed = Condition.make(
            condition_type, False, reason, message, observed_generation=generation, at=now
        )
        conditions = set_condition(conditions, failed)
    return previous.model_copy(update={"phase": ReplicaPhase.degraded, "conditions": conditions})


@dataclass(frozen=True)
class Transition:
    """A change worth an Event."""

    type: str
    reason: str
    message: str


def replica_transition(
    previous: TarsReplicaStatus | None, current: TarsReplicaStatus
) -> Transition | None:
    """The Event to post when the phase moved, None when it did not.

    A replica's first phase is no news: its creation has its own Event.
    """
    if previous is None or previous.phase is None or previous.phase == current.phase:
        return None
    ready = find_condition(current.conditions, ReplicaConditionType.ready)
    progressing = find_condition(current.conditions, ReplicaConditionType.progressing)
    failed_rollout = progressing is not None and progressing.reason == ReplicaReason.rollout_failed
    detail = progressing if failed_rollout else ready
    message = f"phase {current.phase}" + (
        f": {detail.message}" if detail is not None and detail.message else ""
    )
    event_type = "Warning" if current.phase is ReplicaPhase.degraded else "Normal"
    return Transition(event_type, str(current.phase), message)
