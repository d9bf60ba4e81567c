"""A container's environment as the kubelet builds it: `$(VAR)` expansion, `envFrom` and
`env` with their ConfigMap, Secret and field references, looked up through the pod's
context that every container of the pod shares."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.harness.podrunner.addresses import HOST_IP
from tests.harness.podrunner.cluster import API_TIMEOUT_SECONDS, PodView, ignore_status


class ContainerConfigError(Exception):
    """The container cannot be configured yet (missing ConfigMap key, unsupported volume...)."""


# What keeps a container from starting this time but may pass on a later attempt.
RETRYABLE_ERRORS = (ContainerConfigError, OSError, ApiException, urllib3.exceptions.HTTPError)


# $(VAR) expansion, as k8s.io/kubernetes/third_party/forked/golang/expansion does it.
def expand(text: str, variables: Mapping[str, str]) -> str:
    """Expand `$(NAME)` from `variables`; `$$` escapes; unknown references stay verbatim."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            rest = text[cursor + 1 :]
            if rest[0] == "$":
                out.append("$")
                advance = 1
            elif rest[0] == "(":
                closing = rest.find(")")
                if closing == -1:
                    out.append("$(")
                    advance = 1
                else:
                    name = rest[1:closing]
                    out.append(variables.get(name, f"$({name})"))
                    advance = closing + 1
            else:
                out.append("$" + rest[0])
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def _decoded(values: dict[str, str] | None) -> dict[str, str]:
    """base64 values (a Secret's data, a ConfigMap's binaryData) as text, bytes kept."""
    return {
        key: base64.b64decode(value).decode("utf-8", "surrogateescape")
        for key, value in (values or {}).items()
    }


@dataclass
class PodContext:
    """What every container of one pod shares: identity, address, directories, config lookups."""

    pod: PodView
    pod_ip: str
    directory: Path
    core: client.CoreV1Api
    volume_dirs: dict[str, Path] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.pod.namespace

    @property
    def name(self) -> str:
        return self.pod.name

    def _read_optional(self, kind: str, name: str | None, optional: bool | None) -> Any:
        """The ConfigMap or Secret `name`, or None when it is missing and `optional`."""
        read = (
            self.core.read_namespaced_config_map
            if kind == "configmap"
            else self.core.read_namespaced_secret
        )
        try:
            return read(name or "", self.namespace, _request_timeout=API_TIMEOUT_SECONDS)
        except ApiException as error:
            ignore_status(error, 404)
            if optional:
                return None
            raise ContainerConfigError(f'{kind} "{name or ""}" not found') from error

    def config_map(self, name: str | None, optional: bool | None) -> dict[str, str] | None:
        found = self._read_optional("configmap", name, optional)
        if found is None:
            return None
        return {**(found.data or {}), **_decoded(found.binary_data)}

    def secret(self, name: str | None, optional: bool | None) -> dict[str, str] | None:
        found = self._read_optional("secret", name, optional)
        return None if found is None else _decoded(found.data)

    def claimed_directory(self, claim_name: str) -> Path:
        """The host directory of the hostPath or local PersistentVolume bound to the claim."""
        try:
            claim = self.core.read_namespaced_persistent_volume_claim(
                claim_name, self.namespace, _request_timeout=API_TIMEOUT_SECONDS
            )
        except ApiException as error:
            ignore_status(error, 404)
            raise ContainerConfigError(f'persistentvolumeclaim "{claim_name}" not found') from error
        volume_name = claim.spec.volume_name if claim.spec else None
        if not volume_name or claim.status is None or claim.status.phase != "Bound":
            raise ContainerConfigError(f'persistentvolumeclaim "{claim_name}" is not bound')
        volume = self.core.read_persistent_volume(volume_name, _request_timeout=API_TIMEOUT_SECONDS)
        source = volume.spec.host_path or volume.spec.local if volume.spec else None
        if source is None:
            raise ContainerConfigError(
                f"persistentvolume {volume_name}: only hostPath and local volumes are supported"
            )
        return Path(source.path)

    def field(self, path: str) -> str:
        meta = self.pod.meta
        simple = {
            "metadata.name": meta.name,
            "metadata.namespace": meta.namespace,
            "metadata.uid": meta.uid,
            "spec.nodeName": self.pod.spec.node_name,
            "spec.serviceAccountName": self.pod.spec.service_account_name,
            "status.hostIP": HOST_IP,
            "status.hostIPs": HOST_IP,
            "status.podIP": self.pod_ip,
            "status.podIPs": self.pod_ip,
        }
        if path in simple:
            return str(simple[path] or "")
        keyed = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if keyed:
            source = meta.labels if keyed.group(1) == "labels" else meta.annotations
            return str((source or {}).get(keyed.group(2), ""))
        raise ContainerConfigError(f"fieldRef {path!r} is not supported")

    def key_ref(
        self,
        kind: Literal["configmap", "secret"],
        name: str | None,
        key: str,
        optional: bool | None,
    ) -> str | None:
        data = (
            self.config_map(name, optional) if kind == "configmap" else self.secret(name, optional)
        )
        if data is None:
            return None
        if key not in data:
            if optional:
                return None
            raise ContainerConfigError(f"couldn't find key {key} in {kind} {self.namespace}/{name}")
        return data[key]


def container_environment(context: PodContext, container: client.V1Container) -> dict[str, str]:
    """The container's env as the kubelet builds it: envFrom first, then env in order."""
    env: dict[str, str] = {}
    for source in container.env_from or []:
        if source.config_map_ref is not None:
            data = context.config_map(source.config_map_ref.name, source.config_map_ref.optional)
        elif source.secret_ref is not None:
            data = context.secret(source.secret_ref.name, source.secret_ref.optional)
        else:
            raise ContainerConfigError("envFrom source is not supported")
        for key, value in (data or {}).items():
            env[f"{source.prefix or ''}{key}"] = value
    for variable in container.env or []:
        value_from = variable.value_from
        if value_from is None:
            env[variable.name] = expand(variable.value or "", env)
            continue
        resolved: str | None
        if value_from.field_ref is not None:
            resolved = context.field(value_from.field_ref.field_path)
        elif value_from.config_map_key_ref is not None:
            map_ref = value_from.config_map_key_ref
            resolved = context.key_ref("configmap", map_ref.name, map_ref.key, map_ref.optional)
        elif value_from.secret_key_ref is not None:
            secret_ref = value_from.secret_key_ref
            resolved = context.key_ref(
                "secret", secret_ref.name, secret_ref.key, secret_ref.optional
            )
        else:
            raise ContainerConfigError(f"env {variable.name}: this valueFrom is not supported")
        if resolved is not None:
            env[variable.name] = resolved
    return env
