"""Cluster access for the runner: API clients built from its kubeconfig, a service
account's kubeconfig for a pod, the pod as the server returns it, the timeouts and
backoff every API call shares, and timestamps in the API's formats."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.harness.credentials import kubeconfig_document

JsonDict = dict[str, Any]

API_TIMEOUT_SECONDS = 15.0
MAX_API_BACKOFF_SECONDS = 10.0


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    core: client.CoreV1Api
    coordination: client.CoordinationV1Api
    server: str
    ca_data: str | None

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path) -> ClusterAccess:
        api_client = config.new_client_from_config(config_file=str(kubeconfig))
        configuration = api_client.configuration
        ca_data = None
        if configuration.ssl_ca_cert:
            ca_data = base64.b64encode(Path(configuration.ssl_ca_cert).read_bytes()).decode()
        return cls(
            api_client,
            client.CoreV1Api(api_client),
            client.CoordinationV1Api(api_client),
            server=configuration.host,
            ca_data=ca_data,
        )

    def service_account_kubeconfig(self, namespace: str, account: str, token: str) -> JsonDict:
        cluster: JsonDict = {"server": self.server}
        if self.ca_data:
            cluster["certificate-authority-data"] = self.ca_data
        elif self.server.startswith("https://"):
            cluster["insecure-skip-tls-verify"] = True
        return kubeconfig_document(
            cluster,
            f"system:serviceaccount:{namespace}:{account}",
            {"token": token},
            cluster_name="cluster",
            context_name="pod",
            namespace=namespace,
        )


def ignore_status(error: ApiException, *codes: int) -> None:
    if error.status not in codes:
        raise error
