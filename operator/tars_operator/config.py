"""Operator configuration: what a TarsReplica gets when its spec leaves a field out.

One YAML file (`--config`, or `TARS_OPERATOR_CONFIG`) and `TARS_OPERATOR_<FIELD>`
environment variables for the top-level scalar fields; the environment wins, so a
chart can override one value without templating the whole file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from tars_api.meta import CONFIG_MAP_KEY_PATTERN, DNS_SUBDOMAIN_PATTERN
from tars_api.names import COORDINATOR_SERVICE_ACCOUNT, NON_ROOT_ID, REPLICA_PORT
from tars_api.replica import ResourceRequirements
from tars_api.vocabulary import DEFAULT_MODEL, EngineName, Role

from tars_operator import __version__

CONFIG_PATH_ENV = "TARS_OPERATOR_CONFIG"
ENV_PREFIX = "TARS_OPERATOR_"


class ConfigError(ValueError):
    """The configuration file or environment is unusable; the message says where."""


class ConfigModel(BaseModel):
    """camelCase in the file, as Kubernetes-side configuration is; snake_case works too."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class ProbeConfig(ConfigModel):
    path: str = Field(default="/healthz", pattern=r"^/")
    initial_delay_seconds: int = Field(default=2, ge=0)
    period_seconds: int = Field(default=10, ge=1)
    timeout_seconds: int = Field(default=2, ge=1)
    failure_threshold: int = Field(default=3, ge=1)

    def to_k8s(self, port_name: str) -> dict[str, Any]:
        return {
            "httpGet": {"path": self.path, "port": port_name},
            "initialDelaySeconds": self.initial_delay_seconds,
            "periodSeconds": self.period_seconds,
            "timeoutSeconds": self.timeout_seconds,
            "failureThreshold": self.failure_threshold,
        }


class RoleDefaults(ConfigModel):
    """Per-role defaults; unset fields fall back to the operator-wide ones."""

    image: str | None = None
    resources: ResourceRequirements | None = None


def _default_roles() -> dict[Role, RoleDefaults]:
    small = ResourceRequirements(
        requests={"cpu": "100m", "memory": "128Mi"}, limits={"memory": "512Mi"}
    )
    # The tester runs the project's test suite; the coordinator holds the workspace.
    large = ResourceRequirements(
        requests={"cpu": "250m", "memory": "256Mi"}, limits={"memory": "1Gi"}
    )
    return {
        Role.analyzer: RoleDefaults(resources=small),
        Role.generator: RoleDefaults(resources=small),
        Role.tester: RoleDefaults(resources=large),
        Role.coordinator: RoleDefaults(resources=large),
    }


class TesterIsolation(StrEnum):
    """What keeps one test run from another inside a shared tester pod.

    bubblewrap needs a user namespace of its own, a `/proc` it may mount again and the
    `unshare`/`clone` calls that RuntimeDefault seccomp refuses to unprivileged containers.
    """

    # The pod gets its own user namespace (`hostUsers: false`): its uids map to unprivileged
    # host uids, so bwrap may make its namespaces and mount its /proc (`procMount: Unmasked`),
    # and seccomp is the namespace's boundary instead of the node's profile (`Unconfined`).
    # Needs a runtime with user namespaces (containerd 2 or CRI-O with runc >= 1.2 or crun).
    user_namespace = "userNamespace"
    # The pod alone, under RuntimeDefault seccomp: runs sharing a tester can read each other's
    # copies, and every run's status says it had no sandbox.
    pod = "pod"


class PackageIndexTrust(ConfigModel):
    """The CA bundle tester pods trust when they fetch a run's test dependencies: for an
    index mirror, or a proxy, whose certificate no public CA signed."""

    config_map: str = Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    key: str = Field(default="ca.crt", max_length=253, pattern=CONFIG_MAP_KEY_PATTERN)


class OperatorConfig(ConfigModel):
    image: str = Field(default=f"tars-replica:{__version__}", min_length=1)
    image_pull_policy: str = Field(default="IfNotPresent", pattern=r"^(Always|IfNotPresent|Never)$")
    port: int = Field(default=REPLICA_PORT, ge=1, le=65535)
    engine: EngineName = EngineName.static
    model: str = Field(default=DEFAULT_MODEL, min_length=1)
    ollama_host: str | None = Field(default=None, description="OLLAMA_HOST given to every replica")
    coordinator_service_account: str = Field(
        default=COORDINATOR_SERVICE_ACCOUNT,
        min_length=1,
        description="The coordinator reads TarsReplica status, so it alone gets an API token",
    )
    scratch_dir: str = Field(default="/scratch", pattern=r"^/")
    scratch_size_limit: str = "1Gi"
    run_as_user: Annotated[int, Field(ge=1)] = NON_ROOT_ID
    run_as_group: Annotated[int, Field(ge=1)] = NON_ROOT_ID
    tester_isolation: TesterIsolation = TesterIsolation.user_namespace
    package_index_ca: PackageIndexTrust | None = Field(
        default=None, description="None: testers trust the image's public CA bundle"
    )
    readiness_probe: ProbeConfig = ProbeConfig()
    liveness_probe: ProbeConfig = ProbeConfig(initial_delay_seconds=10, period_seconds=20)
    roles: dict[Role, RoleDefaults] = Field(default_factory=_default_roles)

    def image_for(self, role: Role) -> str:
        return self.roles.get(role, RoleDefaults()).image or self.image

    def resources_for(self, role: Role) -> ResourceRequirements:
        return self.roles.get(role, RoleDefaults()).resources or ResourceRequirements()


def _scalar_fields() -> dict[str, str]:
    """Environment variable name -> field name, for the fields a string can set."""
    nested = {"readiness_probe", "liveness_probe", "roles", "package_index_ca"}
    return {
        f"{ENV_PREFIX}{name.upper()}": name
        for name in OperatorConfig.model_fields
        if name not in nested
    }


def load_config(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> OperatorConfig:
    """The configuration from `path` (or $TARS_OPERATOR_CONFIG) with environment overrides."""
    environ = os.environ if environ is None else environ
    if path is None and environ.get(CONFIG_PATH_ENV):
        path = Path(environ[CONFIG_PATH_ENV])
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError(f"cannot read operator config {path}: {error.strerror}") from error
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or type(error).__name__
            raise ConfigError(
                f"operator config {path} is not valid YAML{where}: {problem}"
            ) from error
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"operator config {path} must be a mapping, not {type(loaded).__name__}"
            )
        values.update(loaded or {})
    for variable, field in _scalar_fields().items():
        if environ.get(variable):
            values[field] = environ[variable]
    try:
        return OperatorConfig.model_validate(values)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc']) or '(root)'}: {issue['msg']}"
            for issue in error.errors()
        )
        source = str(path) if path is not None else "the environment"
        raise ConfigError(f"invalid operator config ({source}): {problems}") from error
