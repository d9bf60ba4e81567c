"""The node as a whole: registration, the pod watch, scheduling pending pods onto this node,
one PodWorker per bound pod, and the pids and log files tests look at."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import TracebackType
from typing import Self

import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.harness.podrunner.addresses import AddressPool, pod_network
from tests.harness.podrunner.cluster import (
    API_TIMEOUT_SECONDS,
    MAX_API_BACKOFF_SECONDS,
    ClusterAccess,
    PodView,
    ignore_status,
)
from tests.harness.podrunner.logs import LogServer
from tests.harness.podrunner.node import DEFAULT_NODE_NAME, EventRecorder, NodeAgent
from tests.harness.podrunner.worker import STOP_GRACE_SECONDS, PodWorker

log = logging.getLogger("podrunner")

WATCH_TIMEOUT_SECONDS = 60


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
