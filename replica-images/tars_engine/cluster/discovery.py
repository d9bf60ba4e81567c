"""Where the worker replicas are: TarsReplicas in a namespace and their Services' ready endpoints.

A TarsReplica's Service is named after it; its ready pod addresses are in the
EndpointSlices labelled `kubernetes.io/service-name`. Both are watched (bounded
watch timeouts, relisted after an error), so replicas scaled mid-run are used as soon
as their pods are ready. Without a cluster, endpoints are given directly: as
constructor arguments or TARS_ENDPOINTS_ANALYZER / _GENERATOR / _TESTER (comma-separated
URLs).

A TarsReplica labelled `tars.dev/run` belongs to that run alone (the operator makes a
tester of the run's test image so): it is never part of the namespace's shared pool, and
its tester endpoints serve only that run (`RoleDirectory.testers_for`).

Each endpoint keeps one client object for its lifetime, which is what the workflow's
role pools recognise instances by.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from tars_api.meta import GROUP, VERSION
from tars_api.names import REPLICA_PORT_NAME, RUN_LABEL, SERVICE_NAME_LABEL, ReplicaEnv
from tars_api.replica import TARS_REPLICA_PLURAL
from tars_api.vocabulary import WORKER_ROLES, Role

from tars_engine.transports.http_client import (
    HttpAnalyzer,
    HttpGenerator,
    HttpRole,
    HttpTester,
    RequestObserver,
)

log = logging.getLogger(__name__)

WATCH_TIMEOUT_SECONDS = 30
# The client gives up a little after the server should have closed the watch.
REQUEST_TIMEOUT_SECONDS = WATCH_TIMEOUT_SECONDS + 10
RETRY_SECONDS = 2.0

HttpRoleT = TypeVar("HttpRoleT", bound=HttpRole)


def cluster_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """The pod's credentials: a kubeconfig file when given, else the in-cluster service account."""
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def static_endpoints(env: Mapping[str, str] | None = None) -> dict[Role, list[str]]:
    """TARS_ENDPOINTS_<ROLE> for every worker role that has it."""
    source = env if env is not None else os.environ
    found: dict[Role, list[str]] = {}
    for role in WORKER_ROLES:
        value = source.get(ReplicaEnv.endpoints_prefix + role.value.upper(), "")
        urls = [url.strip().rstrip("/") for url in value.split(",") if url.strip()]
        if urls:
            found[role] = urls
    return found


class RoleClients(Generic[HttpRoleT]):
    """The clients of one role's current endpoints, one per URL for as long as it is listed."""

    def __init__(self, factory: Callable[[str], HttpRoleT]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._clients: dict[str, HttpRoleT] = {}

    def update(self, urls: Sequence[str]) -> None:
        # A client dropped here may still be serving a lease: it is left to finish, not closed.
        with self._lock:
            self._clients = {url: self._clients.get(url) or self._factory(url) for url in urls}

    def ready(self) -> list[HttpRoleT]:
        with self._lock:
            return list(self._clients.values())

    def urls(self) -> list[str]:
        with self._lock:
            return sorted(self._clients)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for role_client in clients:
            role_client.close()


class RoleDirectory:
    """The worker roles' endpoints in one namespace (or a static list), kept current: the
    shared pool, and the testers each run with a test image has of its own."""

    def __init__(self, observer: RequestObserver | None = None) -> None:
        self._new_tester: Callable[[str], HttpTester] = lambda url: HttpTester(
            url, observer=observer
        )
        self.analyzers = RoleClients(lambda url: HttpAnalyzer(url, observer=observer))
        self.generators = RoleClients(lambda url: HttpGenerator(url, observer=observer))
        self.testers = RoleClients(self._new_tester)
        self._by_role: dict[Role, RoleClients[Any]] = {
            Role.analyzer: self.analyzers,
            Role.generator: self.generators,
            Role.tester: self.testers,
        }
        # Each run's own tester URLs as last seen, and the clients of the runs this
        # coordinator works on: one object per run until it ends, since its workflow holds it.
        self._run_urls: dict[str, list[str]] = {}
        self._run_testers: dict[str, RoleClients[HttpTester]] = {}
        self._changed = threading.Condition()

    def set_endpoints(self, role: Role, urls: Sequence[str]) -> None:
        self._by_role[role].update(sorted(set(urls)))
        with self._changed:
            self._changed.notify_all()

    def set_run_testers(self, urls_by_run: Mapping[str, Sequence[str]]) -> None:
        """Every run's own tester endpoints; a run left out has none (now)."""
        with self._changed:
            self._run_urls = {run: sorted(set(urls)) for run, urls in urls_by_run.items()}
            for run, clients in self._run_testers.items():
                clients.update(self._run_urls.get(run, []))
            self._changed.notify_all()

    def testers_for(self, run: str | None) -> RoleClients[HttpTester]:
        """The testers of `run` alone; None: the shared pool."""
        if run is None:
            return self.testers
        with self._changed:
            clients = self._run_testers.get(run)
            if clients is None:
                clients = self._run_testers[run] = RoleClients(self._new_tester)
                clients.update(self._run_urls.get(run, []))
            return clients

    def forget_run(self, run: str) -> None:
        """The run has ended: its testers' clients go (a later run of its name starts anew)."""
        with self._changed:
            clients = self._run_testers.pop(run, None)
        if clients is not None:
            clients.close()

    def endpoints(self, role: Role) -> list[str]:
        return self._by_role[role].urls()

    def missing_roles(self, run: str | None = None) -> list[Role]:
        """Worker roles without an endpoint; with `run`, its own testers stand for the pool's."""
        clients = {**self._by_role, Role.tester: self.testers_for(run)}
        return [role for role in WORKER_ROLES if not clients[role].ready()]

    def wait_for_roles(self, timeout_seconds: float, run: str | None = None) -> list[Role]:
        """Wait until every worker role has an endpoint; returns those still missing."""
        with self._changed:
            self._changed.wait_for(lambda: not self.missing_roles(run), timeout=timeout_seconds)
        return self.missing_roles(run)

    def close(self) -> None:
        with self._changed:
            run_testers, self._run_testers = list(self._run_testers.values()), {}
        for clients in [*self._by_role.values(), *run_testers]:
            clients.close()

    @classmethod
    def static(
        cls, endpoints: Mapping[Role, Sequence[str]], observer: RequestObserver | None = None
    ) -> RoleDirectory:
        directory = cls(observer)
        for role, urls in endpoints.items():
            directory.set_endpoints(role, urls)
        return directory


def slice_ready_urls(endpoint_slice: dict[str, Any]) -> list[str]:
    """http://address:port for each ready endpoint of a discovery.k8s.io/v1 EndpointSlice (JSON)."""
    ports = [
        port["port"]
        for port in endpoint_slice.get("ports") or []
        if port.get("port") is not None and port.get("name") in (REPLICA_PORT_NAME, None, "")
    ]
    if not ports:
        return []
    urls = []
    for endpoint in endpoint_slice.get("endpoints") or []:
        if (endpoint.get("conditions") or {}).get("ready") is False:
            continue
        for address in endpoint.get("addresses") or []:
            host = f"[{address}]" if ":" in address else address
            urls.append(f"http://{host}:{ports[0]}")
    return urls


class ClusterDiscovery:
    """Watches TarsReplicas and EndpointSlices in a namespace and keeps a RoleDirectory current."""

    def __init__(
        self, api: client.ApiClient, namespace: str, observer: RequestObserver | None = None
    ) -> None:
        self.namespace = namespace
        self.directory = RoleDirectory(observer)
        self._api = api
        self._lock = threading.RLock()
        # TarsReplica (= Service) name -> its role, and the run it belongs to (None: shared).
        self._replicas: dict[str, tuple[Role, str | None]] = {}
        self._slices: dict[str, tuple[str, list[str]]] = {}  # slice name -> (service, urls)
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._follow,
                args=(self._list_replicas, self._replica_event),
                name=f"tars-discovery-replicas-{namespace}",
                daemon=True,
            ),
            threading.Thread(
                target=self._follow,
                args=(self._list_slices, self._slice_event),
                name=f"tars-discovery-slices-{namespace}",
                daemon=True,
            ),
        ]

    def start(self) -> ClusterDiscovery:
        for thread in self._threads:
            thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=REQUEST_TIMEOUT_SECONDS)
        self.directory.close()

    # -- listing and watching ------------------------------------------

    def _list_replicas(self, **kwargs: Any) -> Any:
        return client.CustomObjectsApi(self._api).list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, TARS_REPLICA_PLURAL, **kwargs
        )

    def _list_slices(self, **kwargs: Any) -> Any:
        return client.DiscoveryV1Api(self._api).list_namespaced_endpoint_slice(
            self.namespace, label_selector=SERVICE_NAME_LABEL, **kwargs
        )

    def _follow(
        self, lister: Callable[..., Any], on_event: Callable[[str, Any, bool], None]
    ) -> None:
        """List, then watch from that list's version; relist after any error, forever."""
        while not self._stopping.is_set():
            try:
                listed = lister(_request_timeout=REQUEST_TIMEOUT_SECONDS)
                items, version = _items_and_version(listed)
                on_event("SYNC", items, True)
                while not self._stopping.is_set():
                    stream = watch.Watch()
                    for event in stream.stream(
                        lister,
                        resource_version=version,
                        timeout_seconds=WATCH_TIMEOUT_SECONDS,
                        _request_timeout=REQUEST_TIMEOUT_SECONDS,
                    ):
                        if self._stopping.is_set():
                            stream.stop()
                            break
                        if event["type"] == "ERROR":
                            raise ApiException(status=event["raw_object"].get("code", 500))
                        on_event(event["type"], event["object"], False)
                    version = stream.resource_version or version
            # A watch must outlive any failure of the API server or the connection: it relists.
            except (
                ApiException,
                urllib3.exceptions.HTTPError,
                OSError,
                ValueError,
                KeyError,
            ) as exc:
                if not self._stopping.is_set():
                    log.warning("discovery in %s: %s; relisting", self.namespace, exc)
                    self._stopping.wait(RETRY_SECONDS)

    def _replica_event(self, kind: str, payload: Any, full: bool) -> None:
        with self._lock:
            if full:
                self._replicas = {}
            for replica in payload if full else [payload]:
                metadata = replica["metadata"]
                role = _worker_role(replica.get("spec", {}).get("role"))
                if kind == "DELETED" or role is None:
                    self._replicas.pop(metadata["name"], None)
                else:
                    run = (metadata.get("labels") or {}).get(RUN_LABEL)
                    self._replicas[metadata["name"]] = (role, run)
        self._publish()

    def _slice_event(self, kind: str, payload: Any, full: bool) -> None:
        with self._lock:
            if full:
                self._slices = {}
            for item in payload if full else [payload]:
                # Listed objects are models, watched ones JSON: one form for both.
                endpoint_slice = self._api.sanitize_for_serialization(item)
                metadata = endpoint_slice["metadata"]
                if kind == "DELETED":
                    self._slices.pop(metadata["name"], None)
                    continue
                service = (metadata.get("labels") or {}).get(SERVICE_NAME_LABEL, "")
                self._slices[metadata["name"]] = (service, slice_ready_urls(endpoint_slice))
        self._publish()

    def _publish(self) -> None:
        # Under the lock throughout: two watchers publishing at once cannot leave a stale view.
        with self._lock:
            by_role: dict[Role, list[str]] = {role: [] for role in WORKER_ROLES}
            by_run: dict[str, list[str]] = {}
            for service, urls in self._slices.values():
                role, run = self._replicas.get(service, (None, None))
                if role is None:
                    continue
                if run is None:
                    by_role[role].extend(urls)
                elif role is Role.tester:
                    by_run.setdefault(run, []).extend(urls)
            for role, urls in by_role.items():
                self.directory.set_endpoints(role, urls)
            self.directory.set_run_testers(by_run)


def _worker_role(value: object) -> Role | None:
    try:
        role = Role(value)
    except ValueError:
        return None
    return role if role in WORKER_ROLES else None


def _items_and_version(listed: Any) -> tuple[list[Any], str]:
    if isinstance(listed, dict):
        return list(listed.get("items", [])), listed["metadata"]["resourceVersion"]
    return list(listed.items or []), listed.metadata.resource_version
