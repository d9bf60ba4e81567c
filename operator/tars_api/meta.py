"""Shared API machinery: group/version, the wire base model, object metadata, conditions.

The pieces here are the Kubernetes conventions every TARS kind follows, so that the
operator, the CLI and the CRD generator agree on one shape.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PlainSerializer,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

GROUP = "tars.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "tars"

# RFC 1123 subdomain, the rule for names of ConfigMaps, Secrets, claims and most objects.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A container image reference as the distribution spec's grammar has it: an optional
# registry host (and port), lowercase path components, then a tag, a digest or both.
IMAGE_REFERENCE_PATTERN = (
    r"^([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*"
    r"(:[0-9]+)?/)?[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)
# A ConfigMap's or Secret's data key.
CONFIG_MAP_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
# metav1.Condition's own validation, copied so the API server enforces the same shape.
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class ApiModel(BaseModel):
    """Base of every API type: snake_case in Python, camelCase on the wire.

    Unknown fields are ignored rather than refused: objects read from a cluster whose
    CRD is newer than this code must still parse (the API server prunes the rest). A
    model's validator is built when first used, not on import: a command that reads one
    kind does not pay for the others.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        validate_default=True,
        defer_build=True,
    )

    @classmethod
    def build_strict(cls, **values: Any) -> Self:
        """A new object from Python code: unlike parsing, a misspelt field is an error."""
        known = set(cls.model_fields) | {field.alias for field in cls.model_fields.values()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TypeError(f"{cls.__name__} has no field {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self, *, exclude_none: bool = True) -> dict[str, Any]:
        """The wire form: camelCase keys, JSON-compatible values."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=exclude_none)


class CelRule(BaseModel):
    """One `x-kubernetes-validations` entry: a CEL rule the API server evaluates."""

    model_config = ConfigDict(frozen=True)

    rule: str
    message: str
    field_path: str | None = None
    reason: str | None = None

    def to_schema(self) -> JsonDict:
        entry: JsonDict = {"rule": self.rule, "message": self.message}
        if self.field_path is not None:
            entry["fieldPath"] = self.field_path
        if self.reason is not None:
            entry["reason"] = self.reason
        return entry


def cel_rules(*rules: CelRule) -> JsonDict:
    """JSON-schema extra for a model's `model_config` carrying CEL rules."""
    return {"x-kubernetes-validations": [rule.to_schema() for rule in rules]}


def cel_string(text: str) -> str:
    """`text` as a single-quoted CEL string literal (regexes keep their backslashes)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Cel:
    """Annotation attaching CEL rules to a field or list item: `Annotated[str, Cel(...)]`."""

    def __init__(self, *rules: CelRule) -> None:
        self.rules = rules

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        validations = json_schema.setdefault("x-kubernetes-validations", [])
        validations.extend(rule.to_schema() for rule in self.rules)
        return json_schema


class PreserveUnknownFields:
    """Annotation for free-form objects (affinity): the API server keeps them as sent."""

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def _to_utc_second(value: datetime) -> datetime:
    # metav1.Time has second precision; keeping it avoids spurious status changes.
    return value.astimezone(UTC).replace(microsecond=0)


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, as Kubernetes writes timestamps."""
    return _to_utc_second(value).strftime("%Y-%m-%dT%H:%M:%SZ")


Time = Annotated[
    AwareDatetime,
    AfterValidator(_to_utc_second),
    PlainSerializer(format_time, return_type=str, when_used="json"),
]


def now() -> datetime:
    return _to_utc_second(datetime.now(UTC))


class OwnerReference(ApiModel):
    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None


class ObjectMeta(ApiModel):
    """The part of metav1.ObjectMeta the operator and the CLI read or write."""

    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: Time | None = None
    deletion_timestamp: Time | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    owner_references: list[OwnerReference] = Field(default_factory=list)
    finalizers: list[str] = Field(default_factory=list)


class ConditionStatus(enum.StrEnum):
    true = "True"
    false = "False"
    unknown = "Unknown"

    @classmethod
    def of(cls, value: bool | ConditionStatus) -> ConditionStatus:
        if isinstance(value, ConditionStatus):
            return value
        return cls.true if value else cls.false


class Condition(ApiModel):
    """Shaped like metav1.Condition, with the same validation."""

    type: str = Field(max_length=316, pattern=CONDITION_TYPE_PATTERN)
    status: ConditionStatus
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=CONDITION_REASON_PATTERN,
        description="CamelCase reason for the condition's last transition",
    )
    message: str = Field(default="", max_length=32768)
    last_transition_time: Time
    observed_generation: int | None = Field(default=None, ge=0)

    @classmethod
    def make(
        cls,
        type: str,
        status: bool | ConditionStatus,
        reason: str,
        message: str = "",
        *,
        observed_generation: int | None = None,
        at: datetime | None = None,
    ) -> Self:
        return cls(
            type=type,
            status=ConditionStatus.of(status),
            reason=reason,
            message=message,
            observed_generation=observed_generation,
            last_transition_time=at if at is not None else now(),
        )

    @property
    def is_true(self) -> bool:
        return self.status is ConditionStatus.true


def find_condition(conditions: Iterable[Condition], type: str) -> Condition | None:
    return next((condition for condition in conditions if condition.type == type), None)


def set_condition(conditions: Sequence[Condition], new: Condition) -> list[Condition]:
    """A copy of `conditions` with `new` in place of the condition of the same type.

    The transition time moves only when the status changes, as Kubernetes requires;
    reason, message and observedGeneration always take the new values. Order is kept,
    a new type is appended.
    """
    merged: list[Condition] = []
    replaced = False
    for condition in conditions:
        if condition.type != new.type:
            merged.append(condition)
            continue
        replaced = True
        if condition.status == new.status:
            merged.append(
                new.model_copy(update={"last_transition_time": condition.last_transition_time})
            )
        else:
            merged.append(new)
    if not replaced:
        merged.append(new)
    return merged


def set_conditions(
    conditions: Sequence[Condition], *new: Condition, generation: int | None
) -> list[Condition]:
    """`set_condition` for each of `new`, all stamped with the generation they observed."""
    merged = list(conditions)
    for condition in new:
        merged = set_condition(
            merged, condition.model_copy(update={"observed_generation": generation})
        )
    return merged


CONDITIONS_DESCRIPTION = "Latest observations of the object's state, one per type"


def conditions_field() -> Any:
    """The `conditions` field: a list-map keyed by type, as metav1 conditions are."""
    return Field(
        default_factory=list,
        max_length=16,
        description=CONDITIONS_DESCRIPTION,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


def observed_generation_field() -> Any:
    """The status's `observedGeneration`: which metadata.generation the status describes."""
    return Field(default=None, ge=0, description="metadata.generation the status describes")


def reject_duplicates(values: Sequence[str], what: str) -> None:
    """A ValueError naming `what` (e.g. "spec.env has duplicate names") and each repeated value."""
    duplicates = sorted({value for value in values if values.count(value) > 1})
    if duplicates:
        raise ValueError(f"{what}: {', '.join(duplicates)}")


class PrinterColumn(BaseModel):
    """One `additionalPrinterColumns` entry."""

    model_config = ConfigDict(frozen=True)

    name: str
    type: str
    json_path: str
    description: str
    priority: int = 0
    format: str | None = None

    def to_crd(self) -> dict[str, Any]:
        column: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.format is not None:
            column["format"] = self.format
        column["description"] = self.description
        column["jsonPath"] = self.json_path
        if self.priority:
            column["priority"] = self.priority
        return column


AGE_COLUMN = PrinterColumn(
    name="Age",
    type="date",
    json_path=".metadata.creationTimestamp",
    description="Time since the object was created",
)


class ScaleSubresource(BaseModel):
    model_config = ConfigDict(frozen=True)

    spec_replicas_path: str
    status_replicas_path: str
    label_selector_path: str


class ResourceInfo(BaseModel):
    """Names and CRD-level settings of one kind."""

    model_config = ConfigDict(frozen=True)

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    categories: tuple[str, ...] = (CATEGORY,)
    printer_columns: tuple[PrinterColumn, ...]
    scale: ScaleSubresource | None = None

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"


class ApiObject(ApiModel):
    """A whole custom resource: apiVersion, kind, metadata, spec, status.

    Subclasses set `resource` and declare `kind`, `spec` and `status`.
    """

    resource: ClassVar[ResourceInfo]

    api_version: str = Field(default=API_VERSION, pattern=f"^{re.escape(API_VERSION)}$")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    @property
    def name(self) -> str:
        if self.metadata.name is None:
            raise ValueError(f"this {self.resource.kind} has no metadata.name yet")
        return self.metadata.name

    def owner_reference(self, *, controller: bool = True) -> OwnerReference:
        """A reference making a child object owned by this one (garbage-collected with it)."""
        if self.metadata.uid is None:
            raise ValueError(
                f"{self.resource.kind} {self.name} has no uid: it was not read from the API server"
            )
        return OwnerReference(
            api_version=self.api_version,
            kind=self.resource.kind,
            name=self.name,
            uid=self.metadata.uid,
            controller=controller,
            block_owner_deletion=controller,
        )

    def to_k8s(self, *, include_status: bool = False) -> dict[str, Any]:
        """The manifest to create or apply; status only on request (it has its own subresource)."""
        wire = self.to_dict()
        metadata = {
            key: value for key, value in wire.pop("metadata").items() if value not in ({}, [])
        }
        manifest = {
            "apiVersion": wire.pop("apiVersion"),
            "kind": wire.pop("kind"),
            "metadata": metadata,
        }
        manifest.update(wire)
        if not include_status:
            manifest.pop("status", None)
        return manifest
