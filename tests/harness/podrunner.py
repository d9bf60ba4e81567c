"""Test-only pod runner: plays the kubelet (and the scheduler) for one node.

This machine has no kubelet and no container runtime. The runner registers a Node,
keeps it alive (node Lease plus status heartbeats), binds unscheduled pods to it and
runs every container's command as a local process on the pod's own address. It reports
phase, pod IP, container states and the Ready condition driven by the containers' probes,
so kube-controller-manager's Deployment, ReplicaSet, Job, EndpointSlice and
garbage-collector controllers work unchanged.

Pod addresses come from 198.18.0.0/15, delivered locally through lo: the runner adds
`ip route replace local 198.18.0.0/15 dev lo` when it may (root or CAP_NET_ADMIN; the route
stays, remove it with `ip route del local 198.18.0.0/15 dev lo`). Addresses in 127/8
would need no route, but EndpointSlice validation refuses loopback addresses, so Services
would get no endpoints; the runner falls back to them, with a warning, only when it
cannot add the route. A lock file per address in $TMPDIR/tars-podrunner-addresses keeps
runners of parallel test sessions apart, and addresses something still listens on (a
process left by a killed run) are skipped.

What a container gets:
- argv = `command` + `args` with `$(VAR)` references expanded the way Kubernetes does;
  the executable is looked up on PATH with the interpreter's own bin directory (the
  project's virtualenv) first. An absolute path that does not exist on this machine
  falls back to its basename on that PATH.
- the environment the kubelet would build: `envFrom`, then `env` (`value` with
  `$(VAR)` expansion, `fieldRef`, `configMapKeyRef`, `secretKeyRef`), on top of what an
  image would provide: PATH, HOME, HOSTNAME, LANG and PYTHONUNBUFFERED. Nothing of the
  runner's own environment leaks in.
- if the pod mounts a service-account token volume (the API server adds one unless
  `automountServiceAccountToken` is false), `KUBECONFIG` pointing at a kubeconfig with a
  pod-bound token from the TokenRequest API, so RBAC applies to the process for real.

Limits (a process sees the host filesystem, not the container's):
- volumes become host directories: `emptyDir` a per-pod directory; `configMap`,
  `secret` and `projected` (token, configMap, secret, downwardAPI items) files written
  once at pod start; `hostPath` the host path itself; a `persistentVolumeClaim` the path
  of the hostPath or local PersistentVolume it is bound to (kube-controller-manager binds
  claims to matching volumes; nothing provisions them). Any other volume type, when
  mounted, keeps the container waiting with CreateContainerConfigError. A process only
  finds a mount where an env value, a command/args word or `workingDir` names a path
  under a `mountPath` (also after `--flag=` / `NAME=`): those are rewritten to the host
  directory. `readOnly` and `subPathExpr` are ignored; `subPath` is honoured.
- no images: a container without `command` cannot be started (CreateContainerConfigError).
- no service links (KUBERNETES_SERVICE_HOST and friends), so clients use KUBECONFIG
  rather than in-cluster config; no resourceFieldRef, no resource limits, no security
  context, no preStop/postStart hooks, no grpc probes, no `kubectl exec`
  or port-forward. Each container's output is appended to
  `<state-dir>/pods/<ns>_<pod>_<uid>/<container>.log`; `kubectl logs` (with -f and --tail)
  reads it through the runner's log endpoint.
- scheduling honours `schedulerName`, `schedulingGates` and `nodeSelector` only.
- NetworkPolicies are not enforced. `hostNetwork` pods get 127.0.0.1, which EndpointSlices
  refuse.
- init containers run in order before the others; native sidecars (init containers with
  `restartPolicy: Always`) are not supported: the pod would never leave Pending.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import http.client
import http.server
import logging
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import urllib3
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("podrunner")

JsonDict = dict[str, Any]

DEFAULT_NODE_NAME = "tars-local"
HOST_IP = "127.0.0.1"
# RFC 2544's benchmarking range: never used on real networks, and not refused by EndpointSlice
# validation the way loopback addresses are.
POD_NETWORK = IPv4Network("198.18.0.0/15")
LOOPBACK_NETWORK = IPv4Network("127.0.0.0/8")
ADDRESS_LOCK_DIR = Path(tempfile.gettempdir()) / "tars-podrunner-addresses"
# The lease duration the kubelet uses; renewing at a quarter of it survives a missed beat.
NODE_LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10.0
WATCH_TIMEOUT_SECONDS = 60
API_TIMEOUT_SECONDS = 15.0
MAX_API_BACKOFF_SECONDS = 10.0
# Crash-loop backoff as the kubelet does it since Kubernetes 1.33's reduced decay.
RESTART_BACKOFF_INITIAL = 1.0
RESTART_BACKOFF_MAX = 60.0
RESTART_BACKOFF_RESET_AFTER = 600.0
IDLE_WAKEUP_SECONDS = 10.0
STOP_GRACE_SECONDS = 5.0
KILL_WAIT_SECONDS = 10.0
TOKEN_REFRESH_FRACTION = 0.8
DEFAULT_TOKEN_SECONDS = 3607


class ContainerConfigError(Exception):
    """The container cannot be configured yet (missing ConfigMap key, unsupported volume...)."""


# What keeps a container from starting this time but may pass on a later attempt.
RETRYABLE_ERRORS = (ContainerConfigError, OSError, ApiException, urllib3.exceptions.HTTPError)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Cluster access


@dataclass(frozen=True)
class PodView:
    """A pod as the server returns it: metadata, spec and status are always present."""

    meta: client.V1ObjectMeta
    spec: client.V1PodSpec
    status: client.V1PodStatus
    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, pod: client.V1Pod) -> PodView:
        meta, spec = pod.metadata, pod.spec
        if meta is None or spec is None or not (meta.name and meta.namespace and meta.uid):
            raise ValueError("pod without metadata or spec")
        return cls(
            meta, spec, pod.status or client.V1PodStatus(), meta.name, meta.namespace, meta.uid
        )


@dataclass(frozen=True)
class ClusterAccess:
    """API clients for the runner plus what a pod's kubeconfig needs to reach the server."""

    api_client: client.ApiClient
    server: str
    ca_data: str | None

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path) -> ClusterAccess:
        api_client = config.new_client_from_config(config_file=str(kubeconfig))
        configuration = api_client.configuration
        ca_data = None
        if configuration.ssl_ca_cert:
            ca_data = base64.b64encode(Path(configuration.ssl_ca_cert).read_bytes()).decode()
        return cls(api_client=api_client, server=configuration.host, ca_data=ca_data)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    @property
    def coordination(self) -> client.CoordinationV1Api:
        return client.CoordinationV1Api(self.api_client)

    def service_account_kubeconfig(self, namespace: str, account: str, token: str) -> JsonDict:
        cluster: JsonDict = {"server": self.server}
        if self.ca_data:
            cluster["certificate-authority-data"] = self.ca_data
        elif self.server.startswith("https://"):
            cluster["insecure-skip-tls-verify"] = True
        user = f"system:serviceaccount:{namespace}:{account}"
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": cluster}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "pod",
                    "context": {"cluster": "cluster", "user": user, "namespace": namespace},
                }
            ],
            "current-context": "pod",
        }


def ignore_status(error: ApiException, *codes: int) -> None:
    if error.status not in codes:
        raise error


# ---------------------------------------------------------------------------------------------
# Loopback addresses


def bindable(network: IPv4Network) -> bool:
    probe = socket.socket()
    try:
        probe.bind((str(network[2]), 0))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def route_locally(network: IPv4Network) -> bool:
    ip = shutil.which("ip")
    if ip is None:
        return False
    command = [ip, "route", "replace", "local", str(network), "dev", "lo"]
    return subprocess.run(command, capture_output=True, timeout=10, check=False).returncode == 0


def pod_network() -> IPv4Network:
    """POD_NETWORK once it is delivered locally, else the loopback network (see the module doc)."""
    if bindable(POD_NETWORK) or (route_locally(POD_NETWORK) and bindable(POD_NETWORK)):
        return POD_NETWORK
    log.warning(
        "cannot route %s to lo (needs CAP_NET_ADMIN): pods get 127.x addresses, "
        "which EndpointSlices refuse",
        POD_NETWORK,
    )
    return LOOPBACK_NETWORK


def listening_addresses() -> set[str]:
    """IPv4 addresses something listens on, e.g. a process left over by a killed test run."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # TCP_LISTEN
                packed = bytes.fromhex(local.split(":")[0])
                found.add(str(IPv4Address(int.from_bytes(packed, "little"))))
    return found


class AddressPool:
    """Hands out pod addresses round-robin, so a freed address is not reused at once.

    A lock file per address keeps runners in other processes (parallel test sessions) from
    handing out the same one; the kernel drops the lock when its holder dies.
    """

    def __init__(self, network: IPv4Network, lock_dir: Path = ADDRESS_LOCK_DIR) -> None:
        self._first = int(network[2])  # network[1] is 127.0.0.1 on the loopback network
        self._last = int(network[-2])
        self._next = self._first
        self._lock_dir = lock_dir
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def allocate(self, preferred: str | None = None) -> str:
        """A free address: PREFERRED (a restarted runner keeps a pod's address) when possible."""
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if (
                preferred
                and self._first <= int(IPv4Address(preferred)) <= self._last
                and preferred not in self._held
                and self._claim(preferred)
            ):
                return preferred
            taken = listening_addresses()
            for _ in range(self._last - self._first + 1):
                address = str(IPv4Address(self._next))
                self._next = self._first if self._next >= self._last else self._next + 1
                if address not in self._held and address not in taken and self._claim(address):
                    return address
        raise RuntimeError("no free pod address left")

    def _claim(self, address: str) -> bool:
        descriptor = os.open(self._lock_dir / address, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        self._held[address] = descriptor
        return True

    def release(self, address: str) -> None:
        with self._lock:
            descriptor = self._held.pop(address, None)
        if descriptor is not None:
            os.close(descriptor)


# ---------------------------------------------------------------------------------------------
# Node registration and heartbeats


def machine_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def os_image() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.platform()


def go_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


class NodeAgent:
    """Registers the Node and keeps its Lease and Ready condition fresh."""

    def __init__(
        self, access: ClusterAccess, node_name: str, log_port: int, stopping: threading.Event
    ) -> None:
        self._access = access
        self._log_port = log_port
        self.node_name = node_name
        self._stopping = stopping
        self._registered_at = now_rfc3339()
        self._node_uid = ""
        self._kubelet_version = ""
        self._thread = threading.Thread(target=self._beat, name="podrunner-node", daemon=True)

    @property
    def labels(self) -> dict[str, str]:
        return {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": go_arch(),
        }

    def register(self) -> None:
        core = self._access.core
        body = client.V1Node(metadata=client.V1ObjectMeta(name=self.node_name, labels=self.labels))
        try:
            node = core.create_node(body, _request_timeout=API_TIMEOUT_SECONDS)
        except ApiException as error:
            ignore_status(error, 409)
            node = core.patch_node(
                self.node_name,
                {"metadata": {"labels": self.labels}, "spec": {"unschedulable": False}},
                _content_type="application/strategic-merge-patch+json",
                _request_timeout=API_TIMEOUT_SECONDS,
            )
        self._node_uid = str(node.metadata.uid if node.metadata else "")
        # Reporting the server's version keeps version-skew checks quiet.
        version = client.VersionApi(self._access.api_client).get_code(
            _request_timeout=API_TIMEOUT_SECONDS
        )
        self._kubelet_version = version.git_version
        self._report_status()
        self._renew_lease()
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _node_status(self) -> JsonDict:
        heartbeat = now_rfc3339()
        capacity = {
            "cpu": str(os.cpu_count() or 1),
            "memory": f"{machine_memory_bytes() // 1024}Ki",
            "pods": "110",
            "ephemeral-storage": f"{shutil.disk_usage('/').total // 1024}Ki",
        }
        healthy = {
            "MemoryPressure": "False",
            "DiskPressure": "False",
            "PIDPressure": "False",
            "Ready": "True",
        }
        conditions = [
            {
                "type": kind,
                "status": value,
                "reason": "KubeletReady" if kind == "Ready" else f"KubeletHasNo{kind}",
                "message": "pod runner is posting ready status"
                if kind == "Ready"
                else f"no {kind}",
                "lastHeartbeatTime": heartbeat,
                "lastTransitionTime": self._registered_at,
            }
            for kind, value in healthy.items()
        ]
        return {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": conditions,
            # No Hostname address: the API server would try it first to reach the log server.
            "addresses": [{"type": "InternalIP", "address": HOST_IP}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self._log_port}},
            "nodeInfo": {
                "machineID": self.node_name,
                "systemUUID": self.node_name,
                "bootID": self._registered_at,
                "kernelVersion": platform.release(),
                "osImage": os_image(),
                "containerRuntimeVersion": "podrunner://1",
                "kubeletVersion": self._kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": go_arch(),
            },
        }

    def _report_status(self) -> None:
        self._access.core.patch_node_status(
            self.node_name,
            {"status": self._node_status()},
            _content_type="application/strategic-merge-patch+json",
            _request_timeout=API_TIMEOUT_SECONDS,
        )

    def _renew_lease(self) -> None:
        coordination = self._access.coordination
        spec = {
            "holderIdentity": self.node_name,
            "leaseDurationSeconds": NODE_LEASE_SECONDS,
            "renewTime": now_micro(),
        }
        try:
            coordination.patch_namespaced_lease(
                self.node_name,
                "kube-node-lease",
                {"spec": spec},
                _content_type="application/merge-patch+json",
                _request_timeout=API_TIMEOUT_SECONDS,
            )
        except ApiException as error:
            ignore_status(error, 404)
            owner = client.V1OwnerReference(
                api_version="v1", kind="Node", name=self.node_name, uid=self._node_uid
            )
            coordination.create_namespaced_lease(
                "kube-node-lease",
                client.V1Lease(
                    metadata=client.V1ObjectMeta(name=self.node_name, owner_references=[owner]),
                    spec=client.V1LeaseSpec(
                        holder_identity=self.node_name,
                        lease_duration_seconds=NODE_LEASE_SECONDS,
                        renew_time=datetime.now(UTC),
                    ),
                ),
                _request_timeout=API_TIMEOUT_SECONDS,
            )

    def _beat(self) -> None:
        while not self._stopping.wait(HEARTBEAT_SECONDS):
            try:
                self._renew_lease()
                self._report_status()
            except Exception:  # the next beat retries; the lease outlives several misses
                log.exception("node heartbeat failed")


class EventRecorder:
    """Posts core/v1 Events about pods, as the scheduler and the kubelet do (`kubectl describe`)."""

    def __init__(self, access: ClusterAccess, node_name: str) -> None:
        self._access = access
        self._node_name = node_name

    def record(
        self,
        pod: PodView,
        reason: str,
        message: str,
        *,
        warning: bool = False,
        component: str = "kubelet",
    ) -> None:
        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{pod.name}.", namespace=pod.namespace),
            involved_object=client.V1ObjectReference(
                api_version="v1", kind="Pod", name=pod.name, namespace=pod.namespace, uid=pod.uid
            ),
            reason=reason,
            message=message,
            type="Warning" if warning else "Normal",
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component=component, host=self._node_name),
            reporting_component="podrunner",
            reporting_instance=self._node_name,
        )
        try:
            self._access.core.create_namespaced_event(
                pod.namespace, event, _request_timeout=API_TIMEOUT_SECONDS
            )
        except (ApiException, urllib3.exceptions.HTTPError) as error:
            log.debug("event %s for %s/%s not recorded: %s", reason, pod.namespace, pod.name, error)


# ---------------------------------------------------------------------------------------------
# Pod configuration: volumes, environment, argv


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
        write_atomically(self.kubeconfig, yaml.safe_dump(kubeconfig))
        for path in self._token_files:
            write_atomically(path, self.token)


def write_atomically(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(descriptor, "w") as handle:
        handle.write(content)
    os.replace(temporary, path)


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


def search_path(env: Mapping[str, str]) -> str:
    interpreter_bin = str(Path(sys.executable).parent)
    return os.pathsep.join([interpreter_bin, env.get("PATH", os.environ.get("PATH", os.defpath))])


def resolve_executable(name: str, path: str) -> str:
    if os.sep in name:
        if os.access(name, os.X_OK):
            return name
        name = os.path.basename(name)
    found = shutil.which(name, path=path)
    if found is None:
        raise FileNotFoundError(f'executable file "{name}" not found in $PATH')
    return found


@dataclass(frozen=True)
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    mounts: MountMap


def launch_spec(
    context: PodContext,
    container: client.V1Container,
    token_volumes: set[str],
    token: ServiceAccountToken | None,
) -> LaunchSpec:
    if not container.command:
        raise ContainerConfigError(
            "container has no command: the pod runner has no image entrypoint to fall back on"
        )
    mounts = MountMap.for_container(context, container)
    env = container_environment(context, container)
    argv = [
        mounts.rewrite(expand(word, env)) for word in [*container.command, *(container.args or [])]
    ]
    home = context.directory / "home"
    home.mkdir(exist_ok=True)
    base = {
        "PATH": search_path({}),
        "HOME": str(home),
        "HOSTNAME": context.pod.spec.hostname or context.name,
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }
    if token is not None and any(
        mount.name in token_volumes for mount in container.volume_mounts or []
    ):
        base["KUBECONFIG"] = str(token.kubeconfig)
    full_env = base | {name: mounts.rewrite(value) for name, value in env.items()}
    argv[0] = resolve_executable(argv[0], search_path(full_env))
    cwd = context.directory
    if container.working_dir:
        mapped = mounts.host_path(container.working_dir)
        cwd = Path(mapped) if mapped else cwd
    return LaunchSpec(argv=argv, env=full_env, cwd=cwd, mounts=mounts)


# ---------------------------------------------------------------------------------------------
# Probes


ProbeKind = Literal["startup", "readiness", "liveness"]


@dataclass
class ProbeState:
    kind: ProbeKind
    probe: client.V1Probe
    next_at: float
    passing: bool
    successes: int = 0
    failures: int = 0

    @property
    def period(self) -> float:
        return float(self.probe.period_seconds or 10)

    def record(self, ok: bool, now: float) -> None:
        self.next_at = now + self.period
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= (self.probe.success_threshold or 1):
                self.passing = True
        else:
            self.successes, self.failures = 0, self.failures + 1
            if self.failures >= (self.probe.failure_threshold or 3):
                self.passing = False


def named_port(container: client.V1Container, port: int | str) -> int:
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    for declared in container.ports or []:
        if declared.name == port:
            return int(declared.container_port)
    raise ValueError(f"container has no port named {port!r}")


def run_probe(
    probe: client.V1Probe, container: client.V1Container, pod_ip: str, launch: LaunchSpec
) -> bool:
    timeout = float(probe.timeout_seconds or 1)
    try:
        if probe.http_get is not None:
            action = probe.http_get
            host = action.host or pod_ip
            port = named_port(container, action.port)
            if (action.scheme or "HTTP").upper() == "HTTPS":
                # Like the kubelet, HTTPS probes do not verify the certificate.
                unverified = ssl.create_default_context()
                unverified.check_hostname = False
                unverified.verify_mode = ssl.CERT_NONE
                connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                    host, port, timeout=timeout, context=unverified
                )
            else:
                connection = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                headers = {header.name: header.value for header in action.http_headers or []}
                connection.request("GET", action.path or "/", headers=headers)
                return 200 <= connection.getresponse().status < 400
            finally:
                connection.close()
        if probe.tcp_socket is not None:
            port = named_port(container, probe.tcp_socket.port)
            with socket.create_connection((probe.tcp_socket.host or pod_ip, port), timeout=timeout):
                return True
        if probe.var_exec is not None:
            command = [launch.mounts.rewrite(word) for word in probe.var_exec.command or []]
            command[0] = resolve_executable(command[0], search_path(launch.env))
            result = subprocess.run(
                command,
                env=launch.env,
                cwd=launch.cwd,
                timeout=timeout,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            return result.returncode == 0
    except (OSError, ValueError, subprocess.TimeoutExpired, http.client.HTTPException):
        return False
    return False  # grpc probes are not supported: they never pass


# ---------------------------------------------------------------------------------------------
# Containers and pods


@dataclass(frozen=True)
class Termination:
    exit_code: int
    reason: str
    started_at: str
    finished_at: str
    container_id: str

    def as_state(self) -> JsonDict:
        state: JsonDict = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }
        state["containerID"] = self.container_id
        return state


@dataclass
class ContainerRuntime:
    """One container's process and what the kubelet would know about it."""

    spec: client.V1Container
    init: bool
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    started_monotonic: float = 0.0
    restart_count: int = 0
    restarts_in_a_row: int = 0
    last_exit: Termination | None = None
    previous_exit: Termination | None = None
    done: bool = False
    next_start: float = 0.0
    first_waiting_reason: str = "ContainerCreating"
    waiting_reason: str = ""
    waiting_message: str = ""
    launch: LaunchSpec | None = None
    probes: list[ProbeState] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.spec.name)

    @property
    def container_id(self) -> str | None:
        return f"process://{self.process.pid}" if self.process else None

    def probe(self, kind: ProbeKind) -> ProbeState | None:
        return next((state for state in self.probes if state.kind == kind), None)

    @property
    def started(self) -> bool:
        startup = self.probe("startup")
        return self.process is not None and (startup is None or startup.passing)

    @property
    def ready(self) -> bool:
        readiness = self.probe("readiness")
        return self.started and (readiness is None or readiness.passing)

    def reset_probes(self, now: float) -> None:
        self.probes = []
        kinds: tuple[tuple[ProbeKind, client.V1Probe | None], ...] = (
            ("startup", self.spec.startup_probe),
            ("readiness", self.spec.readiness_probe),
            ("liveness", self.spec.liveness_probe),
        )
        for kind, probe in kinds:
            if probe is not None:
                self.probes.append(
                    ProbeState(
                        kind,
                        probe,
                        now + (probe.initial_delay_seconds or 0),
                        passing=kind == "liveness",
                    )
                )

    def status(self) -> JsonDict:
        state: JsonDict = {"waiting": None, "running": None, "terminated": None}
        last_state: JsonDict = {"waiting": None, "running": None, "terminated": None}
        if self.process is not None:
            state["running"] = {"startedAt": self.started_at}
        elif self.done and self.last_exit is not None:
            state["terminated"] = self.last_exit.as_state()
        else:
            waiting: JsonDict = {"reason": self.waiting_reason or self.first_waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state["waiting"] = waiting
        shown_last = self.previous_exit if self.done and self.process is None else self.last_exit
        if shown_last is not None:
            last_state["terminated"] = shown_last.as_state()
        return {
            "name": self.name,
            "image": self.spec.image or "",
            "imageID": f"podrunner://{self.spec.image or ''}",
            "containerID": self.container_id or (self.last_exit and self.last_exit.container_id),
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": last_state,
        }


def signal_group(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def stop_processes(processes: list[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM every process group, SIGKILL what is left after `grace`, reap everything."""
    for process in processes:
        if process.poll() is None:
            signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, deadline - time.monotonic()))
    for process in processes:
        # The group may outlive its leader (children of the container command).
        signal_group(process, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(KILL_WAIT_SECONDS)  # only a process stuck in the kernel outlasts this


class PodWorker:
    """Runs one pod bound to this node: prepares it, supervises its containers, reports status."""

    def __init__(
        self,
        pod: PodView,
        access: ClusterAccess,
        pool: AddressPool,
        state_dir: Path,
        events: EventRecorder,
        on_done: Callable[[str], None],
    ) -> None:
        self._pod = pod
        self._access = access
        self._events = events
        self._pool = pool
        self._on_done = on_done
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._runner_stopping = False
        self._vanished = False
        self.uid = pod.uid
        self.pod_ip = HOST_IP if pod.spec.host_network else pool.allocate(pod.status.pod_ip)
        self.directory = state_dir / "pods" / f"{pod.namespace}_{pod.name}_{self.uid}"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._context = PodContext(
            pod=pod, pod_ip=self.pod_ip, directory=self.directory, core=access.core
        )
        self._prepared = False
        self._prepare_retry_at = 0.0
        self._prepare_failures = 0
        self._token_volumes: set[str] = set()
        self._token: ServiceAccountToken | None = None
        self.containers = [
            ContainerRuntime(spec, init=True, log_path=self.directory / f"{spec.name}.log")
            for spec in pod.spec.init_containers or []
        ] + [
            ContainerRuntime(
                spec,
                init=False,
                log_path=self.directory / f"{spec.name}.log",
                first_waiting_reason=(
                    "PodInitializing" if pod.spec.init_containers else "ContainerCreating"
                ),
            )
            for spec in pod.spec.containers
        ]
        self._start_time = now_rfc3339()
        self._transitions: dict[str, tuple[str, str]] = {}
        self._reported: JsonDict | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"pod-{pod.namespace}/{pod.name}", daemon=True
        )

    # -- control from the runner --------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def update(self, pod: PodView) -> None:
        with self._lock:
            self._pod = pod
        self._wake.set()

    def vanish(self) -> None:
        """The pod object is gone (force-deleted): stop at once, nothing left to finalize."""
        self._vanished = True
        self._wake.set()

    def stop(self) -> None:
        self._runner_stopping = True
        self._wake.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def kill_remaining(self) -> None:
        for runtime in self.containers:
            if runtime.process is not None:
                signal_group(runtime.process, signal.SIGKILL)

    def pids(self) -> dict[str, int]:
        return {runtime.name: runtime.process.pid for runtime in self.containers if runtime.process}

    # -- the loop -------------------------------------------------------------------------------

    @property
    def _deleting(self) -> bool:
        with self._lock:
            return self._pod.meta.deletion_timestamp is not None

    def _run(self) -> None:
        try:
            while not (self._runner_stopping or self._vanished or self._deleting):
                self._step()
                self._report_safely()
                self._wake.wait(self._seconds_to_next_event())
                self._wake.clear()
            self._shutdown()
        except Exception:
            log.exception("pod %s failed", self.uid)
            stop_processes(self._processes(), 0)
        finally:
            if self.pod_ip != HOST_IP:
                self._pool.release(self.pod_ip)
            self._on_done(self.uid)

    def _processes(self) -> list[subprocess.Popen[bytes]]:
        return [runtime.process for runtime in self.containers if runtime.process is not None]

    def _shutdown(self) -> None:
        if self._vanished or self._runner_stopping:
            stop_processes(self._processes(), 0 if self._vanished else STOP_GRACE_SECONDS)
            return
        with self._lock:
            pod = self._pod
        grace = pod.meta.deletion_grace_period_seconds
        if grace is None:
            grace = pod.spec.termination_grace_period_seconds or 30
        for runtime in self.containers:
            if runtime.process is not None:
                self._events.record(pod, "Killing", f"Stopping container {runtime.name}")
        stop_processes(self._processes(), float(grace))
        log.info("pod %s/%s stopped, finalizing", pod.namespace, pod.name)
        attempt = 0
        while not self._runner_stopping:
            try:
                self._access.core.delete_namespaced_pod(
                    pod.name,
                    pod.namespace,
                    body=client.V1DeleteOptions(
                        grace_period_seconds=0, preconditions=client.V1Preconditions(uid=self.uid)
                    ),
                    _request_timeout=API_TIMEOUT_SECONDS,
                )
                return
            except ApiException as error:
                if error.status in (404, 409):
                    return  # gone already, or a new pod of that name
                log.warning("finalizing %s/%s failed: %s", pod.namespace, pod.name, error.reason)
            except urllib3.exceptions.HTTPError as error:
                log.warning("finalizing %s/%s failed: %s", pod.namespace, pod.name, error)
            attempt += 1
            self._wake.wait(min(MAX_API_BACKOFF_SECONDS, backoff_delay(attempt)))
            self._wake.clear()

    def _step(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._context.pod = self._pod
        if self._token is not None and now >= self._token.refresh_at:
            with contextlib.suppress(*RETRYABLE_ERRORS):
                self._token.refresh()
        if not self._prepared:
            if now < self._prepare_retry_at:
                return
            try:
                self._token_volumes, self._token = prepare_volumes(self._context, self._access)
                self._prepared = True
                for runtime in self.containers:
                    runtime.waiting_reason, runtime.waiting_message = "", ""
            except RETRYABLE_ERRORS as error:
                self._prepare_failures += 1
                self._prepare_retry_at = now + backoff_delay(self._prepare_failures)
                for runtime in self.containers:
                    runtime.waiting_reason, runtime.waiting_message = (
                        "CreateContainerConfigError",
                        str(error),
                    )
                return
        for runtime in self.containers:
            self._reap(runtime, now)
        self._start_due(now)
        for runtime in self.containers:
            self._probe(runtime, now)

    def _reap(self, runtime: ContainerRuntime, now: float) -> None:
        process = runtime.process
        if process is None or process.poll() is None:
            return
        signal_group(process, signal.SIGKILL)
        code = process.returncode
        exit_code = 128 - code if code < 0 else code
        reason = "Completed" if code == 0 else "Error"
        runtime.previous_exit = runtime.last_exit
        runtime.last_exit = Termination(
            exit_code, reason, runtime.started_at, now_rfc3339(), f"process://{process.pid}"
        )
        runtime.process = None
        self._after_exit(runtime, now, succeeded=code == 0)

    def _after_exit(self, runtime: ContainerRuntime, now: float, *, succeeded: bool) -> None:
        policy = self._pod.spec.restart_policy or "Always"
        if runtime.init:
            restart = not succeeded and policy != "Never"
        else:
            restart = policy == "Always" or (policy == "OnFailure" and not succeeded)
        if not restart:
            runtime.done = True
            return
        if now - runtime.started_monotonic >= RESTART_BACKOFF_RESET_AFTER:
            runtime.restarts_in_a_row = 0
        runtime.restarts_in_a_row += 1
        runtime.next_start = now + backoff_delay(runtime.restarts_in_a_row)
        runtime.waiting_reason, runtime.waiting_message = "CrashLoopBackOff", ""
        runtime.restart_count += 1
        self._events.record(
            self._pod, "BackOff", f"Back-off restarting container {runtime.name}", warning=True
        )

    def _start_due(self, now: float) -> None:
        for runtime in self.containers:
            if (
                runtime.init
                and runtime.done
                and runtime.last_exit
                and runtime.last_exit.exit_code != 0
            ):
                return  # a failed init container with restartPolicy Never fails the pod
            if runtime.init and not runtime.done:
                if runtime.process is None and now >= runtime.next_start:
                    self._launch(runtime, now)
                return  # init containers run one at a time, in order
        for runtime in self.containers:
            if (
                not runtime.init
                and runtime.process is None
                and not runtime.done
                and now >= runtime.next_start
            ):
                self._launch(runtime, now)

    def _launch(self, runtime: ContainerRuntime, now: float) -> None:
        try:
            launch = launch_spec(self._context, runtime.spec, self._token_volumes, self._token)
        except RETRYABLE_ERRORS as error:
            reason = (
                "RunContainerError"
                if isinstance(error, FileNotFoundError)
                else "CreateContainerConfigError"
            )
            self._retry_later(runtime, now, reason, str(error))
            return
        try:
            with runtime.log_path.open("ab") as log_file:
                runtime.process = subprocess.Popen(
                    launch.argv,
                    env=launch.env,
                    cwd=launch.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as error:
            self._retry_later(runtime, now, "RunContainerError", str(error))
            return
        runtime.launch = launch
        runtime.started_at = now_rfc3339()
        runtime.started_monotonic = now
        runtime.waiting_reason, runtime.waiting_message = "", ""
        runtime.reset_probes(now)
        process = runtime.process
        threading.Thread(target=self._wake_on_exit, args=(process,), daemon=True).start()
        log.info(
            "pod %s: started %s (pid %d) on %s", self.uid, runtime.name, process.pid, self.pod_ip
        )
        self._events.record(self._pod, "Started", f"Started container {runtime.name}")

    def _retry_later(
        self, runtime: ContainerRuntime, now: float, reason: str, message: str
    ) -> None:
        if (reason, message) != (runtime.waiting_reason, runtime.waiting_message):
            self._events.record(self._pod, "Failed", f"Error: {message}", warning=True)
        runtime.waiting_reason, runtime.waiting_message = reason, message
        runtime.restarts_in_a_row += 1
        runtime.next_start = now + backoff_delay(runtime.restarts_in_a_row)

    def _wake_on_exit(self, process: subprocess.Popen[bytes]) -> None:
        process.wait()
        self._wake.set()

    def _probe(self, runtime: ContainerRuntime, now: float) -> None:
        if runtime.process is None or runtime.launch is None:
            return
        startup = runtime.probe("startup")
        for state in runtime.probes:
            if now < state.next_at or (
                state.kind != "startup" and startup is not None and not startup.passing
            ):
                continue
            was_passing = state.passing
            state.record(
                run_probe(state.probe, runtime.spec, self.pod_ip, runtime.launch), time.monotonic()
            )
            if was_passing and not state.passing:
                message = f"{state.kind.capitalize()} probe of {runtime.name} failed"
                self._events.record(self._pod, "Unhealthy", message, warning=True)
            failed_for_good = state.kind == "liveness" and not state.passing
            failed_startup = state.kind == "startup" and state.failures >= (
                state.probe.failure_threshold or 3
            )
            if failed_for_good or failed_startup:
                message = f"Container {runtime.name} failed {state.kind} probe, will be restarted"
                self._events.record(self._pod, "Killing", message)
                stop_processes(
                    [runtime.process], float(self._pod.spec.termination_grace_period_seconds or 30)
                )
                self._reap(runtime, time.monotonic())
                return

    def _seconds_to_next_event(self) -> float:
        now = time.monotonic()
        due = [now + IDLE_WAKEUP_SECONDS]
        if not self._prepared:
            due.append(self._prepare_retry_at)
        if self._token is not None:
            due.append(self._token.refresh_at)
        for runtime in self.containers:
            if runtime.process is None and not runtime.done:
                due.append(runtime.next_start)
            if runtime.process is not None:
                due.extend(state.next_at for state in runtime.probes)
        return min(max(0.05, min(due) - now), IDLE_WAKEUP_SECONDS)

    # -- status ---------------------------------------------------------------------------------

    def _phase(self) -> str:
        inits = [runtime for runtime in self.containers if runtime.init]
        apps = [runtime for runtime in self.containers if not runtime.init]
        if any(
            runtime.done and runtime.last_exit and runtime.last_exit.exit_code != 0
            for runtime in inits
        ):
            return "Failed"
        if not all(runtime.done for runtime in inits):
            return "Pending"
        if all(runtime.done for runtime in apps):
            failed = any(runtime.last_exit and runtime.last_exit.exit_code != 0 for runtime in apps)
            return "Failed" if failed else "Succeeded"
        if any(runtime.process is not None or runtime.last_exit is not None for runtime in apps):
            return "Running"
        return "Pending"

    def _condition(self, kind: str, ok: bool, reason: str = "") -> JsonDict:
        status = "True" if ok else "False"
        previous = self._transitions.get(kind)
        if previous is None or previous[0] != status:
            self._transitions[kind] = (status, now_rfc3339())
        condition: JsonDict = {
            "type": kind,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": self._transitions[kind][1],
        }
        if reason and not ok:
            condition["reason"] = reason
        return condition

    def _status(self) -> JsonDict:
        phase = self._phase()
        apps = [runtime for runtime in self.containers if not runtime.init]
        initialized = all(runtime.done for runtime in self.containers if runtime.init)
        containers_ready = all(runtime.ready for runtime in apps)
        with self._lock:
            existing = {
                condition.type: condition.status for condition in self._pod.status.conditions or []
            }
            gates = [gate.condition_type for gate in self._pod.spec.readiness_gates or []]
        gates_ready = all(existing.get(gate) == "True" for gate in gates)
        terminal = phase in ("Succeeded", "Failed")
        conditions = [
            self._condition("PodScheduled", True),
            self._condition("PodReadyToStartContainers", self._prepared),
            self._condition("Initialized", initialized, "ContainersNotInitialized"),
            self._condition(
                "ContainersReady", containers_ready and not terminal, "ContainersNotReady"
            ),
            self._condition(
                "Ready", containers_ready and gates_ready and not terminal, "ContainersNotReady"
            ),
        ]
        return {
            "phase": phase,
            "hostIP": HOST_IP,
            # Replace, not merge: a pod adopted after a restart may get a new address.
            "hostIPs": [{"$patch": "replace"}, {"ip": HOST_IP}],
            "podIP": self.pod_ip,
            "podIPs": [{"$patch": "replace"}, {"ip": self.pod_ip}],
            "startTime": self._start_time,
            "conditions": conditions,
            "initContainerStatuses": [
                runtime.status() for runtime in self.containers if runtime.init
            ],
            "containerStatuses": [runtime.status() for runtime in apps],
        }

    def _report_safely(self) -> None:
        status = self._status()
        if status == self._reported:
            return
        pod = self._pod
        try:
            self._access.core.patch_namespaced_pod_status(
                pod.name,
                pod.namespace,
                {"metadata": {"uid": self.uid}, "status": status},
                _content_type="application/strategic-merge-patch+json",
                _request_timeout=API_TIMEOUT_SECONDS,
            )
            self._reported = status
        except ApiException as error:
            # Not found or conflicting uid: the pod is going away and the watch will say so.
            log.warning(
                "status of pod %s/%s not reported: %s %s",
                pod.namespace,
                pod.name,
                error.status,
                error.reason,
            )
        except Exception:  # connection trouble: the next step reports again
            log.exception("status of pod %s/%s not reported", pod.namespace, pod.name)


def backoff_delay(attempt: int) -> float:
    return min(RESTART_BACKOFF_INITIAL * 2 ** max(0, attempt - 1), RESTART_BACKOFF_MAX)


# ---------------------------------------------------------------------------------------------
# The kubelet's log endpoint, so that `kubectl logs` works


LOG_PATH = re.compile(r"^/containerLogs/([^/]+)/([^/]+)/([^/]+)$")
FOLLOW_POLL_SECONDS = 0.5


class LogServer:
    """Serves GET /containerLogs/NAMESPACE/POD/CONTAINER over HTTPS on the host address.

    The API server proxies `kubectl logs` here (it connects to the node's InternalIP at
    daemonEndpoints.kubeletEndpoint.Port). Like a kubelet without client authentication
    it trusts whoever reaches it; it listens on 127.0.0.1 only. Supports `follow` and
    `tailLines`.
    """

    def __init__(
        self,
        find_log: Callable[[str, str, str], Path],
        is_running: Callable[[str, str], bool],
        directory: Path,
    ) -> None:
        self._find_log = find_log
        self._is_running = is_running
        self._directory = directory
        self._closing = threading.Event()
        self._server = http.server.ThreadingHTTPServer((HOST_IP, 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="podrunner-logs", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        certificate, key = self._directory / "serving.crt", self._directory / "serving.key"
        self._directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-days", "30", "-subj", "/CN=podrunner",
                "-addext", f"subjectAltName=IP:{HOST_IP}",
                "-keyout", str(key), "-out", str(certificate),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread.start()

    def stop(self) -> None:
        self._closing.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                match = LOG_PATH.match(url.path)
                if match is None:
                    self.send_error(404)
                    return
                namespace, pod, container = match.groups()
                try:
                    path = server._find_log(namespace, pod, container)
                except FileNotFoundError as error:
                    self.send_error(404, str(error))
                    return
                query = urllib.parse.parse_qs(url.query)
                tail = query.get("tailLines", [""])[0]
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                with contextlib.suppress(OSError), path.open("rb") as handle:
                    content = handle.read()
                    if tail.isdigit():
                        content = (
                            b"".join(content.splitlines(keepends=True)[-int(tail) :])
                            if int(tail)
                            else b""
                        )
                    self.wfile.write(content)
                    if query.get("follow", [""])[0] == "true":
                        server._follow(handle, self.wfile, namespace, pod)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("log server: " + format, *args)

        return Handler

    def _follow(self, handle: Any, out: Any, namespace: str, pod: str) -> None:
        while not self._closing.wait(FOLLOW_POLL_SECONDS):
            chunk = handle.read()
            if chunk:
                out.write(chunk)
                out.flush()
            elif not self._is_running(namespace, pod):
                return


# ---------------------------------------------------------------------------------------------
# The runner


class PodRunner:
    """The node: registration, scheduling of pending pods and one PodWorker per bound pod.

    Use as a context manager, or call `start()` and `stop()`.
    """

    def __init__(
        self,
        kubeconfig: Path,
        state_dir: Path,
        node_name: str = DEFAULT_NODE_NAME,
    ) -> None:
        self.access = ClusterAccess.from_kubeconfig(kubeconfig)
        self.node_name = node_name
        self.state_dir = state_dir
        self._stopping = threading.Event()
        self._pool = AddressPool(pod_network())
        self._events = EventRecorder(self.access, node_name)
        self._logs = LogServer(self.log_path, self._is_running, state_dir / "log-server")
        self._node = NodeAgent(self.access, node_name, self._logs.port, self._stopping)
        self._workers: dict[str, PodWorker] = {}
        self._finished: set[str] = set()
        self._lock = threading.Lock()
        self._watch: watch.Watch | None = None
        self._watcher = threading.Thread(
            target=self._watch_pods, name="podrunner-watch", daemon=True
        )

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._logs.start()
            self._node.register()
            self._watcher.start()
        except BaseException:
            self.stop()
            raise
        log.info("node %s registered; running pods under %s", self.node_name, self.state_dir)

    def stop(self) -> None:
        """Stop watching and kill every process this runner started."""
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.join(STOP_GRACE_SECONDS + 5)
        for worker in workers:
            worker.kill_remaining()  # a worker still inside a long deletion grace period
        if self._watcher.is_alive():
            self._watcher.join(5)
        self._node.join(5)
        self._logs.stop()

    # -- inspection for tests and tools ---------------------------------------------------------

    def pids(self, namespace: str, name: str) -> dict[str, int]:
        """Container name -> pid of the pod's running processes (empty if none)."""
        for worker in self._workers_snapshot():
            if worker.directory.name.startswith(f"{namespace}_{name}_"):
                return worker.pids()
        return {}

    def _is_running(self, namespace: str, name: str) -> bool:
        return bool(self.pids(namespace, name))

    def all_pids(self) -> list[int]:
        return [pid for worker in self._workers_snapshot() for pid in worker.pids().values()]

    def log_path(self, namespace: str, name: str, container: str) -> Path:
        """The file a container's stdout and stderr go to (its latest pod of that name)."""
        matches = sorted(
            (self.state_dir / "pods").glob(f"{namespace}_{name}_*/{container}.log"),
            key=lambda path: path.stat().st_mtime,
        )
        if not matches:
            raise FileNotFoundError(f"no log for {namespace}/{name} container {container}")
        return matches[-1]

    def _workers_snapshot(self) -> list[PodWorker]:
        with self._lock:
            return list(self._workers.values())

    # -- watching -------------------------------------------------------------------------------

    def _watch_pods(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                listed = self.access.core.list_pod_for_all_namespaces(
                    _request_timeout=API_TIMEOUT_SECONDS
                )
                self._sync(listed.items)
                version = str(listed.metadata.resource_version if listed.metadata else "")
                while not self._stopping.is_set():
                    version = self._watch_from(version)
                    failures = 0
            except ApiException as error:
                if error.status != 410:
                    failures += 1
                    log.warning("pod watch failed: %s %s", error.status, error.reason)
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as error:
                if self._stopping.is_set():
                    return
                failures += 1
                log.warning("pod watch failed: %s", error)
            self._stopping.wait(min(MAX_API_BACKOFF_SECONDS, failures))

    def _watch_from(self, version: str) -> str:
        self._watch = watch.Watch()
        for event in self._watch.stream(
            self.access.core.list_pod_for_all_namespaces,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_TIMEOUT_SECONDS,
            _request_timeout=WATCH_TIMEOUT_SECONDS + API_TIMEOUT_SECONDS,
        ):
            if self._stopping.is_set():
                break
            if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                self._handle_safely(event["type"], event["object"])
        return self._watch.resource_version or version

    def _sync(self, pods: list[client.V1Pod]) -> None:
        present = {pod.metadata.uid for pod in pods if pod.metadata}
        with self._lock:
            gone = [uid for uid in self._workers if uid not in present]
            self._finished &= present
        for uid in gone:
            self._vanish(uid)
        for pod in pods:
            self._handle_safely("ADDED", pod)

    def _handle_safely(self, kind: str, pod: client.V1Pod) -> None:
        # One pod that cannot be handled must not stop the node from handling the others.
        try:
            self._handle(kind, PodView.of(pod))
        except Exception:
            name = f"{pod.metadata.namespace}/{pod.metadata.name}" if pod.metadata else "?"
            log.exception("cannot handle %s event for pod %s", kind, name)

    def _vanish(self, uid: str) -> None:
        with self._lock:
            worker = self._workers.get(uid)
            self._finished.discard(uid)
        if worker is not None:
            worker.vanish()

    def _handle(self, kind: str, pod: PodView) -> None:
        uid = pod.uid
        if kind == "DELETED":
            self._vanish(uid)
            return
        if not pod.spec.node_name:
            if self._schedulable(pod):
                self._bind(pod)
            return
        if pod.spec.node_name != self.node_name:
            return
        with self._lock:
            if self._stopping.is_set() or uid in self._finished:
                return
            worker = self._workers.get(uid)
            if worker is None:
                if (
                    pod.status.phase in ("Succeeded", "Failed")
                    and pod.meta.deletion_timestamp is None
                ):
                    return  # finished before this runner started
                worker = PodWorker(
                    pod, self.access, self._pool, self.state_dir, self._events, self._worker_done
                )
                self._workers[uid] = worker
                worker.start()
                return
        worker.update(pod)

    def _worker_done(self, uid: str) -> None:
        with self._lock:
            self._workers.pop(uid, None)
            self._finished.add(uid)

    def _schedulable(self, pod: PodView) -> bool:
        spec = pod.spec
        return (
            pod.meta.deletion_timestamp is None
            and (pod.status.phase or "Pending") == "Pending"
            and (spec.scheduler_name or "default-scheduler") == "default-scheduler"
            and not spec.scheduling_gates
            and all(
                self._node.labels.get(key) == value
                for key, value in (spec.node_selector or {}).items()
            )
        )

    def _bind(self, pod: PodView) -> None:
        binding = client.V1Binding(
            api_version="v1",
            kind="Binding",
            metadata=client.V1ObjectMeta(name=pod.name, uid=pod.uid),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=self.node_name),
        )
        try:
            # The server answers with a Status, not a Binding: skip decoding the response.
            self.access.core.create_namespaced_pod_binding(
                pod.name,
                pod.namespace,
                binding,
                _preload_content=False,
                _request_timeout=API_TIMEOUT_SECONDS,
            )
            log.info("bound %s/%s to %s", pod.namespace, pod.name, self.node_name)
            self._events.record(
                pod,
                "Scheduled",
                f"Successfully assigned {pod.namespace}/{pod.name} to {self.node_name}",
                component="default-scheduler",
            )
        except ApiException as error:
            ignore_status(error, 404, 409)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Play the kubelet for one node (test and dev use only)."
    )
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--node-name", default=DEFAULT_NODE_NAME)
    parser.add_argument("--state-dir", type=Path, default=Path(".dev/podrunner"))
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not arguments.kubeconfig.is_file():
        parser.error(f"kubeconfig {arguments.kubeconfig} does not exist")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        runner = PodRunner(arguments.kubeconfig, arguments.state_dir.resolve(), arguments.node_name)
        runner.start()
    except (
        config.ConfigException,
        yaml.YAMLError,
        ApiException,
        urllib3.exceptions.HTTPError,
        OSError,
        subprocess.SubprocessError,
    ) as error:
        print(f"podrunner: cannot start: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    try:
        stop.wait()
    finally:
        runner.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
