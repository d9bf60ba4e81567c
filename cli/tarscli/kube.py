"""Connecting to a cluster the way kubectl does, and typed access to the TARS objects.

`connect()` takes the options tarscli.options declares: `--kubeconfig` (else
`$KUBECONFIG`, else ~/.kube/config, else the in-cluster service account), `--context` and
`-n/--namespace` (else the context's namespace, else "default"); tarscli.kubeconfig reads
them. `Cluster.runs` and `Cluster.replicas` read and write SelfCodingRun and TarsReplica
objects as the API models, and turn the API's "not found" answers into messages that say
what is missing and how to fix it. `Resources.watch` follows objects with the API's watch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, cast

import pydantic
from tars_api.meta import GROUP, VERSION, ApiObject
from tars_api.names import REPLICA_PORT_NAME
from tars_api.replica import TarsReplica
from tars_api.run import SelfCodingRun

from tarscli import kubeconfig
from tarscli.api_client import JSON, MERGE_PATCH, REQUEST_TIMEOUT, Answer, ApiClient, ApiError
from tarscli.errors import CliError

DEFAULT_NAMESPACE = "default"
FIELD_MANAGER = "tarscli"
# A watch is re-established after this many seconds (server side), as kubectl does.
WATCH_WINDOW_SECONDS = 300
# How much longer than its window a watch may stay silent before the connection is dropped.
WATCH_READ_SLACK_SECONDS = 30
TARS_KINDS: tuple[type[ApiObject], ...] = (TarsReplica, SelfCodingRun)
INSTALL_HINT = 'run "tarscli self-code setup --install-crds" or "kubectl apply -f crds/"'
CHANGES: tuple[str, ...] = ("ADDED", "MODIFIED", "DELETED")
GONE = 410

ObjectT = TypeVar("ObjectT", bound=ApiObject)
ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)
WatchEvent = Literal["ADDED", "MODIFIED", "DELETED"]


def crds_missing_message(missing: list[str]) -> str:
    return f"the TARS CRDs are not installed in this cluster (missing {', '.join(missing)}); {INSTALL_HINT}"


def api_path(
    plural: str,
    namespace: str | None = None,
    name: str | None = None,
    *,
    group: str = "",
    version: str = "v1",
) -> str:
    """The REST path of a kind's collection, or of one object of it: core kinds without a group."""
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    collection = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    return collection if name is None else f"{collection}/{name}"


def watch_events(
    api: ApiClient,
    collection: str,
    params: dict[str, str | int | bool],
    resource_version: str | None,
    window: int,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """One watch of `collection` from `resource_version` (None: from the objects as they
    are now, sent as ADDED first), ended by the server after `window` seconds: (type,
    object) for each change and bookmark. An ERROR event raises ApiError, 410 Gone when
    the version is too old to resume from."""
    since = {"resourceVersion": resource_version} if resource_version is not None else {}
    for event in api.stream(
        collection,
        {
            **params,
            **since,
            "watch": True,
            "allowWatchBookmarks": True,
            "timeoutSeconds": window,
        },
        timeout=(REQUEST_TIMEOUT[0], window + WATCH_READ_SLACK_SECONDS),
    ):
        kind = str(event.get("type", ""))
        raw = event.get("object") or {}
        if kind == "ERROR":
            raise ApiError(int(raw.get("code", 500)), str(raw.get("reason", "")), json.dumps(raw))
        yield kind, raw


@dataclass
class Cluster:
    """An API client bound to the namespace the command works in."""

    api: ApiClient
    namespace: str

    @property
    def server(self) -> str:
        return self.api.server

    @property
    def runs(self) -> Resources[SelfCodingRun]:
        return Resources(self, SelfCodingRun)

    @property
    def replicas(self) -> Resources[TarsReplica]:
        return Resources(self, TarsReplica)

    def missing_crds(self) -> list[str]:
        """CRD names whose resources the API does not serve (discovery: no CRD read access needed)."""
        try:
            discovered = self.api.request("GET", f"/apis/{GROUP}/{VERSION}")
            served = {resource["name"] for resource in discovered.get("resources", [])}
        except ApiError as error:
            if error.status != 404:
                raise
            served = set()
        return [kind.resource.crd_name for kind in TARS_KINDS if kind.resource.plural not in served]

    def require_crds(self) -> None:
        missing = self.missing_crds()
        if missing:
            raise CliError(crds_missing_message(missing))

    def send_to_replica(
        self,
        replica: TarsReplica,
        method: str,
        path: str,
        *,
        payload: bytes | None = None,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> Answer:
        """`method path` on the replica's own API through the API server's service proxy:
        from outside the cluster, with the user's credentials and RBAC (`get` or `create`
        on `services/proxy`). The operator names a replica's Service after it. A non-2xx
        answer, the replica's or the proxy's, raises ApiError."""
        service = api_path("services", self.namespace, f"{replica.name}:{REPLICA_PORT_NAME}")
        return self.api.send(
            method, f"{service}/proxy/{path.lstrip('/')}", payload=payload, timeout=timeout
        )

    def call_replica(
        self,
        replica: TarsReplica,
        path: str,
        body: pydantic.BaseModel,
        answer: type[ModelT],
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> ModelT:
        """POST `body` to `path` of the replica's API (`send_to_replica`); its typed answer."""
        answered = self.send_to_replica(
            replica, "POST", path, payload=body.model_dump_json().encode(), timeout=timeout
        )
        return answer.model_validate_json(answered.body)


def connect(kubeconfig_path: Path | None, context: str | None, namespace: str | None) -> Cluster:
    """A client for the cluster the flags (or kubectl's defaults) point at."""
    endpoint = kubeconfig.load(kubeconfig_path, context)
    return Cluster(
        api=ApiClient(endpoint), namespace=namespace or endpoint.namespace or DEFAULT_NAMESPACE
    )


class Resources(Generic[ObjectT]):
    """The objects of one TARS kind in the cluster's namespace, as API models."""

    def __init__(self, cluster: Cluster, kind: type[ObjectT]) -> None:
        self.cluster = cluster
        self.kind = kind
        self._info = kind.resource
        self._collection = api_path(
            self._info.plural, cluster.namespace, group=GROUP, version=VERSION
        )

    def _translate(self, error: ApiError, name: str | None) -> Exception:
        """A CliError for the 404s a user can fix; other errors pass through unchanged."""
        if error.status != 404:
            return error
        status = error.status_object
        if not status:
            # Not even a Status: no API serves this path, so the kind is not installed.
            return CliError(crds_missing_message([self._info.crd_name]))
        details = status.get("details") or {}
        if (
            name is not None
            and details.get("name") == name
            and details.get("kind") == self._info.plural
        ):
            return CliError(
                f'{self._info.kind} "{name}" not found in namespace "{self.cluster.namespace}"'
            )
        return error

    def _call(
        self,
        method: str,
        name: str | None,
        *,
        params: dict[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = JSON,
    ) -> Any:
        path = self._collection if name is None else f"{self._collection}/{name}"
        try:
            return self.cluster.api.request(
                method, path, params=params, body=body, content_type=content_type
            )
        except ApiError as error:
            raise self._translate(error, name) from error

    def parse(self, raw: dict[str, Any]) -> ObjectT:
        return self.kind.model_validate(raw)

    def get(self, name: str) -> ObjectT:
        return self.parse(self._call("GET", name))

    def list(self, label_selector: str | None = None) -> list[ObjectT]:
        params: dict[str, str | int | bool] = (
            {"labelSelector": label_selector} if label_selector else {}
        )
        answer = self._call("GET", None, params=params)
        return [self.parse(item) for item in answer.get("items", [])]

    def create(self, obj: ObjectT) -> ObjectT:
        body = obj.to_k8s()
        body["metadata"]["namespace"] = self.cluster.namespace
        created = self._call("POST", None, params={"fieldManager": FIELD_MANAGER}, body=body)
        return self.parse(created)

    def merge_patch(self, name: str, patch: dict[str, Any]) -> ObjectT:
        patched = self._call(
            "PATCH",
            name,
            params={"fieldManager": FIELD_MANAGER},
            body=patch,
            content_type=MERGE_PATCH,
        )
        return self.parse(patched)

    def delete(self, name: str) -> None:
        self._call("DELETE", name)

    def watch(
        self,
        *,
        name: str | None = None,
        deadline: float | None = None,
        current: ObjectT | None = None,
    ) -> Iterator[tuple[WatchEvent, ObjectT]]:
        """The current state of the objects (all, or `name`), then every change, as it happens.

        The current state comes as ADDED events: listed, or `current` (the object `name`
        as just read), whose resourceVersion the watch then starts from. The watch is
        resumed from the last resourceVersion when the server ends it, and re-listed when
        that version has expired (410 Gone). `deadline` (time.monotonic()) ends the iteration.
        """
        only_name: dict[str, str | int | bool] = (
            {"fieldSelector": f"metadata.name={name}"} if name is not None else {}
        )
        resource_version: str | None = None
        if current is not None:
            resource_version = current.metadata.resource_version
            yield "ADDED", current
        while deadline is None or time.monotonic() < deadline:
            if resource_version is None:
                listed = self._call("GET", None, params=only_name)
                resource_version = str(listed["metadata"]["resourceVersion"])
                yield from (("ADDED", self.parse(item)) for item in listed.get("items", []))
            window = WATCH_WINDOW_SECONDS
            if deadline is not None:
                window = max(1, min(window, round(deadline - time.monotonic())))
            try:
                for kind, raw in watch_events(
                    self.cluster.api, self._collection, only_name, resource_version, window
                ):
                    resource_version = str(
                        raw.get("metadata", {}).get("resourceVersion", resource_version)
                    )
                    if kind in CHANGES:
                        yield cast(WatchEvent, kind), self.parse(raw)
            except ApiError as error:
                if error.status != GONE:
                    raise self._translate(error, None) from error
                resource_version = None
