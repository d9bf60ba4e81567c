"""The operator's few API calls: server-side apply, get, status merge-patch, discovery.

Requests go through the `kubernetes` client's ApiClient (authentication, TLS, connection
pool) but skip its typed models: the operator works on plain manifests built by pure
functions, and decoding every response into generated classes would only cost time.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import kopf
import kubernetes.client
import kubernetes.config
from tars_api.meta import GROUP, VERSION
from tars_api.replica import TARS_REPLICA_PLURAL
from tars_api.run import SELF_CODING_RUN_PLURAL

from tars_operator import metrics

FIELD_MANAGER = "tars-operator"
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
TRANSIENT_RETRY_DELAYS = (0.5, 1.0, 2.0)
Manifest = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        path = f"{base}/namespaces/{namespace}/{self.plural}"
        if name is not None:
            path += f"/{name}"
        if subresource is not None:
            path += f"/{subresource}"
        return path


DEPLOYMENTS = Resource("apps", "v1", "deployments")
SERVICES = Resource("", "v1", "services")
CONFIG_MAPS = Resource("", "v1", "configmaps")
TARS_REPLICAS = Resource(GROUP, VERSION, TARS_REPLICA_PLURAL)
SELF_CODING_RUNS = Resource(GROUP, VERSION, SELF_CODING_RUN_PLURAL)
_BY_KIND = {
    "Deployment": DEPLOYMENTS,
    "Service": SERVICES,
    "ConfigMap": CONFIG_MAPS,
    "TarsReplica": TARS_REPLICAS,
}


class ApiError(Exception):
    """A non-2xx answer of the API server, with its status code and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def is_not_found(self) -> bool:
        return self.status == 404

    @property
    def is_permanent(self) -> bool:
        """Retrying cannot help: the request itself is refused (invalid, forbidden)."""
        return self.status in (400, 401, 403, 405, 415, 422)


def _api_error(status: int, reason: str, data: bytes) -> ApiError:
    """The error of a refused request; the body is a Status object, or plain text (404 of a path)."""
    try:
        payload = json.loads(data)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        return ApiError(
            status, str(payload.get("reason") or reason), str(payload.get("message") or "")
        )
    return ApiError(status, reason, data[:500].decode(errors="replace").strip())


def load_configuration(
    kubeconfig: str | None = None, context: str | None = None
) -> kubernetes.client.Configuration:
    """Credentials from `kubeconfig`/`context`, else in-cluster, else $KUBECONFIG or ~/.kube/config."""
    configuration = kubernetes.client.Configuration()
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    else:
        kubernetes.config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
    return configuration


def connection_info(configuration: kubernetes.client.Configuration) -> kopf.ConnectionInfo:
    """The same credentials for kopf's own watch and event client."""
    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    # RFC 7235: "Bearer <token>", or a bare token.
    scheme, _, token = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme or None,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


class KubeClient:
    """Synchronous and thread-safe: kopf runs sync handlers on its thread pool."""

    def __init__(
        self,
        configuration: kubernetes.client.Configuration,
        *,
        pool_size: int = 16,
        request_timeout: float = 30.0,
    ) -> None:
        configuration.connection_pool_maxsize = pool_size
        self.configuration = configuration
        self._api = kubernetes.client.ApiClient(configuration)
        self._timeout = request_timeout

    def close(self) -> None:
        self._api.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> Manifest:
        url_path = f"{path}?{urlencode(query)}" if query else path
        _, url, headers, _, _ = self._api.param_serialize(
            method=method,
            resource_path=url_path,
            header_params={"Accept": accept, "Content-Type": content_type},
            auth_settings=["BearerToken"],
        )
        for delay in (*TRANSIENT_RETRY_DELAYS, None):
            response = self._api.call_api(
                method, url, header_params=headers, body=body, _request_timeout=self._timeout
            )
            metrics.API_REQUESTS.labels(verb=method, code=str(response.status)).inc()
            data = response.read()
            if response.status not in TRANSIENT_STATUSES or delay is None:
                break
            # Event handlers get no retries from kopf: a busy or restarting API server
            # must not leave a status stale until the next event.
            time.sleep(delay)
        if not 200 <= response.status <= 299:
            raise _api_error(response.status, str(response.reason), data)
        payload: Manifest = json.loads(data) if data else {}
        return payload

    def get_path(self, path: str) -> Manifest | None:
        """The object at `path`, or None when it does not exist."""
        try:
            return self.request("GET", path)
        except ApiError as error:
            if error.is_not_found:
                return None
            raise

    def get(self, resource: Resource, namespace: str, name: str) -> Manifest | None:
        return self.get_path(resource.path(namespace, name))

    def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply, forced: the operator owns every field it sets on its children."""
        metadata = manifest["metadata"]
        resource = _BY_KIND[manifest["kind"]]
        return self.request(
            "PATCH",
            resource.path(metadata["namespace"], metadata["name"]),
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=manifest,
            content_type="application/apply-patch+yaml",
        )

    def delete(self, resource: Resource, namespace: str, name: str) -> bool:
        """Delete the object, its dependents in the background; False when it was gone."""
        try:
            self.request(
                "DELETE", resource.path(namespace, name), query={"propagationPolicy": "Background"}
            )
        except ApiError as error:
            if error.is_not_found:
                return False
            raise
        return True

    def patch_status(
        self, resource: Resource, namespace: str, name: str, status: Manifest
    ) -> Manifest:
        return self.request(
            "PATCH",
            resource.path(namespace, name, "status"),
            query={"fieldManager": FIELD_MANAGER},
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    def served_resources(self, group_version: str) -> set[str] | None:
        """Plural names the API server serves in `group_version`, or None when it serves none."""
        try:
            discovery = self.request("GET", f"/apis/{group_version}")
        except ApiError as error:
            if error.is_not_found:
                return None
            raise
        return {
            entry["name"] for entry in discovery.get("resources", []) if "/" not in entry["name"]
        }
