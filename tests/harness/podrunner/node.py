"""The Node this runner plays: registration, the Lease and status heartbeats that keep it
Ready, and the Events the scheduler and the kubelet would post about its pods."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.harness.podrunner.addresses import HOST_IP
from tests.harness.podrunner.cluster import (
    API_TIMEOUT_SECONDS,
    ClusterAccess,
    JsonDict,
    PodView,
    ignore_status,
    now_micro,
    now_rfc3339,
)

log = logging.getLogger("podrunner")

DEFAULT_NODE_NAME = "tars-local"
# The lease duration the kubelet uses; renewing at a quarter of it survives a missed beat.
NODE_LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10.0


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
