"""Volumes as host directories: `emptyDir`, `hostPath`, a claim's PersistentVolume, files
written from ConfigMaps, Secrets, projections and the downward API, the pod-bound
service-account token kept fresh, and the map from a container's mount paths to them."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.harness.credentials import write_kubeconfig, write_private
from tests.harness.podrunner.cluster import API_TIMEOUT_SECONDS, ClusterAccess
from tests.harness.podrunner.environment import ContainerConfigError, PodContext

TOKEN_REFRESH_FRACTION = 0.8
DEFAULT_TOKEN_SECONDS = 3607


@dataclass(frozen=True)
class MountMap:
    """Container mount paths and the host directories standing in for them."""

    mounts: tuple[tuple[str, Path], ...]

    @classmethod
    def for_container(cls, context: PodContext, container: client.V1Container) -> MountMap:
        pairs: list[tuple[str, Path]] = []
        for mount in container.volume_mounts or []:
            if mount.name not in context.volume_dirs:
                raise ContainerConfigError(
                    f"volume {mount.name!r}: this volume type is not supported by the pod runner"
                )
            host = context.volume_dirs[mount.name]
            if mount.sub_path:
                host = host / mount.sub_path
                host.mkdir(parents=True, exist_ok=True)
            pairs.append((mount.mount_path.rstrip("/") or "/", host))
        pairs.sort(key=lambda pair: len(pair[0]), reverse=True)
        return cls(tuple(pairs))

    def host_path(self, value: str) -> str | None:
        for mount_path, host in self.mounts:
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                return str(host) + value[len(mount_path) :]
        return None

    def rewrite(self, value: str) -> str:
        """Map a path under a mount to the host; also the value of `--flag=path` / `NAME=path`."""
        mapped = self.host_path(value)
        if mapped is not None:
            return mapped
        if "=" in value:
            prefix, rest = value.split("=", 1)
            mapped = self.host_path(rest)
            if mapped is not None:
                return f"{prefix}={mapped}"
        return value


def write_files(directory: Path, files: Mapping[str, str], mode: int | None) -> None:
    for relative, content in files.items():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, errors="surrogateescape")
        target.chmod(mode if mode is not None else 0o644)


def projected_items(data: Mapping[str, str], items: list[Any] | None) -> dict[str, str]:
    if not items:
        return dict(data)
    return {item.path: data[item.key] for item in items if item.key in data}


class ServiceAccountToken:
    """A pod-bound token from the TokenRequest API, rewritten into files before it expires."""

    def __init__(
        self,
        context: PodContext,
        access: ClusterAccess,
        expiration_seconds: int,
        audience: str | None,
    ) -> None:
        self._context = context
        self._access = access
        self._expiration_seconds = expiration_seconds
        self._audience = audience
        self.token = ""
        self.refresh_at = 0.0
        self.kubeconfig = context.directory / "serviceaccount" / "kubeconfig"
        self._token_files: list[Path] = []

    def add_token_file(self, path: Path) -> None:
        self._token_files.append(path)

    def refresh(self) -> None:
        pod = self._context.pod
        account = pod.spec.service_account_name or "default"
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                # No audience means the API server's own audiences.
                audiences=[self._audience] if self._audience else [],
                expiration_seconds=self._expiration_seconds,
                bound_object_ref=client.V1BoundObjectReference(
                    api_version="v1", kind="Pod", name=pod.name, uid=pod.uid
                ),
            )
        )
        try:
            response = self._context.core.create_namespaced_service_account_token(
                account, self._context.namespace, request, _request_timeout=API_TIMEOUT_SECONDS
            )
        except ApiException as error:
            raise ContainerConfigError(
                f"token request for serviceaccount {account} failed: {error.status} {error.reason}"
            ) from error
        if response.status is None or not response.status.token:
            raise ContainerConfigError(
                f"token request for serviceaccount {account} returned no token"
            )
        self.token = response.status.token
        self.refresh_at = time.monotonic() + self._expiration_seconds * TOKEN_REFRESH_FRACTION
        kubeconfig = self._access.service_account_kubeconfig(
            self._context.namespace, account, self.token
        )
        write_kubeconfig(self.kubeconfig, kubeconfig)
        for path in self._token_files:
            write_private(path, self.token)


def prepare_volumes(
    context: PodContext, access: ClusterAccess
) -> tuple[set[str], ServiceAccountToken | None]:
    """Materialize supported volumes; returns the token volumes' names and the pod's token."""
    token_volumes: set[str] = set()
    token: ServiceAccountToken | None = None
    for volume in context.pod.spec.volumes or []:
        directory = context.directory / "volumes" / volume.name
        if volume.empty_dir is not None:
            directory.mkdir(parents=True, exist_ok=True)
        elif volume.host_path is not None:
            directory = Path(volume.host_path.path)
            if volume.host_path.type in ("DirectoryOrCreate", None, ""):
                directory.mkdir(parents=True, exist_ok=True)
        elif volume.persistent_volume_claim is not None:
            directory = context.claimed_directory(volume.persistent_volume_claim.claim_name)
        elif volume.config_map is not None:
            source = volume.config_map
            data = context.config_map(source.name, source.optional) or {}
            directory.mkdir(parents=True, exist_ok=True)
            write_files(directory, projected_items(data, source.items), source.default_mode)
        elif volume.secret is not None:
            secret_source = volume.secret
            data = context.secret(secret_source.secret_name, secret_source.optional) or {}
            directory.mkdir(parents=True, exist_ok=True)
            write_files(
                directory, projected_items(data, secret_source.items), secret_source.default_mode
            )
        elif volume.projected is not None:
            directory.mkdir(parents=True, exist_ok=True)
            for projection in volume.projected.sources or []:
                if projection.service_account_token is not None:
                    request = projection.service_account_token
                    token = token or ServiceAccountToken(
                        context,
                        access,
                        request.expiration_seconds or DEFAULT_TOKEN_SECONDS,
                        request.audience,
                    )
                    token.add_token_file(directory / request.path)
                    token_volumes.add(volume.name)
                elif projection.config_map is not None:
                    data = (
                        context.config_map(
                            projection.config_map.name, projection.config_map.optional
                        )
                        or {}
                    )
                    write_files(
                        directory,
                        projected_items(data, projection.config_map.items),
                        volume.projected.default_mode,
                    )
                elif projection.secret is not None:
                    data = context.secret(projection.secret.name, projection.secret.optional) or {}
                    write_files(
                        directory,
                        projected_items(data, projection.secret.items),
                        volume.projected.default_mode,
                    )
                elif projection.downward_api is not None:
                    files = {
                        item.path: context.field(item.field_ref.field_path)
                        for item in projection.downward_api.items or []
                        if item.field_ref is not None
                    }
                    write_files(directory, files, volume.projected.default_mode)
        else:
            continue  # unsupported: MountMap refuses it only if a container mounts it
        context.volume_dirs[volume.name] = directory
    if token is not None:
        token.refresh()
    return token_volumes, token
