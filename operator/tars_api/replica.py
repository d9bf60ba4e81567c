"""TarsReplica: one role's long-running replica set, reconciled into a Deployment and a Service."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal, Self

from pydantic import ConfigDict, Field, field_validator, model_validator

from tars_api.meta import (
    AGE_COLUMN,
    ApiModel,
    ApiObject,
    Cel,
    CelRule,
    Condition,
    PreserveUnknownFields,
    PrinterColumn,
    ResourceInfo,
    ScaleSubresource,
    cel_rules,
    conditions_field,
    find_condition,
    observed_generation_field,
    reject_duplicates,
)
from tars_api.vocabulary import EngineName, Role

TARS_REPLICA_PLURAL = "tarsreplicas"
MAX_REPLICAS = 100

# Kubernetes' resource.Quantity grammar without a sign (a container's resources are never
# negative), so a typo in "500Mi" is refused at admission rather than by the Deployment.
QUANTITY_PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
Quantity = (
    Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=64)]
)
ENV_VAR_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"


class ReplicaPhase(enum.StrEnum):
    pending = "Pending"
    """Accepted, no pod ready yet."""
    progressing = "Progressing"
    """A rollout or a scale change is under way; some pods serve."""
    ready = "Ready"
    """Every desired pod is ready."""
    degraded = "Degraded"
    """The rollout failed or pods stopped being ready."""
    suspended = "Suspended"
    """spec.suspend is true: scaled to zero, children kept."""


class ReplicaConditionType(enum.StrEnum):
    ready = "Ready"
    progressing = "Progressing"


class ReplicaReason(enum.StrEnum):
    """The `reason` of a replica's conditions and Events."""

    suspended = "Suspended"
    all_replicas_ready = "AllReplicasReady"
    scaled_to_zero = "ScaledToZero"
    pods_not_created = "PodsNotCreated"
    replicas_not_ready = "ReplicasNotReady"
    rolling_out = "RollingOut"
    waiting_for_pods = "WaitingForPods"
    rollout_complete = "RolloutComplete"
    rollout_failed = "RolloutFailed"
    invalid_spec = "InvalidSpec"
    apply_failed = "ApplyFailed"
    created = "Created"
    updated = "Updated"
    restored = "Restored"


class EnvVar(ApiModel):
    """An environment variable of the role's container."""

    name: str = Field(min_length=1, max_length=256, pattern=ENV_VAR_NAME_PATTERN)
    value: str = Field(default="", max_length=32768)


_VOLUME_ONE_OF_MESSAGE = "spec.volumes: each volume must set exactly one of claimName or hostPath"
CLAIM_MOUNT_ROOT = "/volumes"


class ReplicaVolume(ApiModel):
    """A volume mounted into the role's pods: where a run's `volume` source finds its project.

    The coordinator learns the mounts from TARS_VOLUMES, which the operator sets.
    """

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule="has(self.claimName) != has(self.hostPath)", message=_VOLUME_ONE_OF_MESSAGE
            )
        )
    )

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Volume name",
    )
    claim_name: str | None = Field(
        default=None, min_length=1, max_length=253, description="PersistentVolumeClaim"
    )
    host_path: str | None = Field(
        default=None, max_length=4096, pattern=r"^/", description="Directory on the node"
    )
    mount_path: str | None = Field(
        default=None,
        max_length=4096,
        pattern=r"^/",
        description="Where the pods see it (default: the hostPath itself; /volumes/<name> for a claim)",
    )

    @model_validator(mode="after")
    def _exactly_one_location(self) -> Self:
        if (self.claim_name is None) == (self.host_path is None):
            raise ValueError(_VOLUME_ONE_OF_MESSAGE)
        return self

    @property
    def source_key(self) -> str:
        """How a run's volume source names this volume (the TARS_VOLUMES key)."""
        return f"claim:{self.claim_name}" if self.claim_name else f"hostPath:{self.host_path}"

    @property
    def mount_location(self) -> str:
        if self.mount_path:
            return self.mount_path
        return self.host_path or f"{CLAIM_MOUNT_ROOT}/{self.name}"


class ResourceRequirements(ApiModel):
    """Compute resources of the role's container, as in a core/v1 container."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, max_length=16, description="Guaranteed amounts (cpu: 250m)"
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict, max_length=16, description="Hard caps (memory: 1Gi)"
    )


class TolerationOperator(enum.StrEnum):
    exists = "Exists"
    equal = "Equal"


class TaintEffect(enum.StrEnum):
    no_schedule = "NoSchedule"
    prefer_no_schedule = "PreferNoSchedule"
    no_execute = "NoExecute"


_EXISTS_WITH_VALUE_MESSAGE = "spec.tolerations[].value must be empty when operator is Exists"


class Toleration(ApiModel):
    """A core/v1 Toleration: lets the pods run on nodes with a matching taint."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule="!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                message=_EXISTS_WITH_VALUE_MESSAGE,
                field_path=".value",
            )
        )
    )

    key: str | None = Field(default=None, max_length=316)
    operator: TolerationOperator | None = None
    value: str | None = Field(default=None, max_length=63)
    effect: TaintEffect | None = None
    toleration_seconds: int | None = None

    @model_validator(mode="after")
    def _no_value_with_exists(self) -> Self:
        if self.operator is TolerationOperator.exists and self.value:
            raise ValueError(_EXISTS_WITH_VALUE_MESSAGE)
        return self


class TarsReplicaSpec(ApiModel):
    role: Annotated[
        Role,
        Cel(
            CelRule(
                rule="self == oldSelf",
                message="spec.role is immutable: create another TarsReplica for another role",
            )
        ),
    ] = Field(description="Which role the pods serve")
    replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS, description="Desired number of pods")
    suspend: bool = Field(default=False, description="Scale to zero without removing anything")
    engine: EngineName | None = Field(
        default=None,
        description="Generation engine; the operator's configuration gives the default",
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="Model name for the ollama engine; the operator's configuration gives the default",
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Container image; defaults per role",
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Container resources; defaults per role"
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description="Extra environment variables for the container",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    volumes: list[ReplicaVolume] = Field(
        default_factory=list,
        max_length=16,
        description="Volumes to mount (the coordinator's, for runs with a volume source)",
    )
    node_selector: dict[str, str] | None = Field(
        default=None, max_length=64, description="Node labels the pods must run on"
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=64, description="Taints the pods tolerate"
    )

    affinity: Annotated[dict[str, Any], PreserveUnknownFields()] | None = Field(
        default=None, description="A core/v1 Affinity, passed to the pods as written"
    )

    @field_validator("volumes")
    @classmethod
    def _unique_volume_names(cls, volumes: list[ReplicaVolume]) -> list[ReplicaVolume]:
        reject_duplicates([volume.name for volume in volumes], "spec.volumes has duplicate names")
        return volumes

    @field_validator("env")
    @classmethod
    def _unique_env_names(cls, env: list[EnvVar]) -> list[EnvVar]:
        # The API server refuses duplicates too: env is a list-map keyed by name.
        reject_duplicates([variable.name for variable in env], "spec.env has duplicate names")
        return env


class TarsReplicaStatus(ApiModel):
    phase: ReplicaPhase | None = Field(default=None, description="Summary of the conditions")
    replicas: int | None = Field(
        default=None, ge=0, description="Pods that exist (scale subresource)"
    )
    ready_replicas: int | None = Field(default=None, ge=0, description="Pods ready to serve")
    selector: str | None = Field(
        default=None, max_length=4096, description="Label selector of the pods (scale subresource)"
    )
    endpoint: str | None = Field(
        default=None, max_length=2048, description="URL of the role's Service"
    )
    capabilities: list[Annotated[str, Field(max_length=253)]] = Field(
        default_factory=list, max_length=64, description="What the role's pods report they can do"
    )
    conditions: list[Condition] = conditions_field()
    observed_generation: int | None = observed_generation_field()

    @property
    def is_ready(self) -> bool:
        """Ready to take work: the Ready condition is true and at least one pod serves.

        A replica scaled to zero is Ready (its rollout is complete) but cannot serve.
        """
        ready = find_condition(self.conditions, ReplicaConditionType.ready)
        return ready is not None and ready.is_true and (self.ready_replicas or 0) > 0


class TarsReplica(ApiObject):
    """One role's long-running replica set."""

    resource = ResourceInfo(
        kind="TarsReplica",
        plural=TARS_REPLICA_PLURAL,
        singular="tarsreplica",
        short_names=("tr",),
        printer_columns=(
            PrinterColumn(
                name="Role", type="string", json_path=".spec.role", description="Role served"
            ),
            PrinterColumn(
                name="Desired",
                type="integer",
                json_path=".spec.replicas",
                description="Desired pods",
            ),
            PrinterColumn(
                name="Ready",
                type="integer",
                json_path=".status.readyReplicas",
                description="Ready pods",
            ),
            PrinterColumn(
                name="Phase", type="string", json_path=".status.phase", description="Phase"
            ),
            PrinterColumn(
                name="Endpoint",
                type="string",
                json_path=".status.endpoint",
                description="Service URL",
                priority=1,
            ),
            AGE_COLUMN,
        ),
        scale=ScaleSubresource(
            spec_replicas_path=".spec.replicas",
            status_replicas_path=".status.replicas",
            label_selector_path=".status.selector",
        ),
    )

    kind: Literal["TarsReplica"] = "TarsReplica"
    spec: TarsReplicaSpec
    status: TarsReplicaStatus | None = None

    @property
    def is_ready(self) -> bool:
        return self.status is not None and self.status.is_ready

    @classmethod
    def build(
        cls,
        name: str,
        role: Role,
        *,
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
        **spec: Any,
    ) -> TarsReplica:
        """A new replica set: `TarsReplica.build("generator", Role.generator, replicas=3)`."""
        return cls(
            metadata={"name": name, "namespace": namespace, "labels": labels or {}},
            spec=TarsReplicaSpec.build_strict(role=role, **spec),
        )
