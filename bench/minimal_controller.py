"""The least a correct TarsReplica controller does, with the operator's client: the baseline
bench/operator_scale.py measures tars-operator against.

    .venv/bin/python bench/minimal_controller.py --kubeconfig FILE --namespace NS \
        [--workers 16] --metrics-port PORT

One watch on the namespace's TarsReplicas feeds a work queue that `--workers` threads
drain, as a controller-runtime controller's does: an object is queued when it is listed
or its generation changes (its own status writes are no reason to reconcile), and never
handled by two workers at once. Reconciling a replica is server-side applying its
Deployment and Service (replicas.desired_*, KubeClient.apply, as the operator does) and
writing its status, from the applied Deployment, when its observedGeneration is behind. Reconciles are counted on
/metrics so the bench can tell when a restarted controller has gone through every object.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
import kubernetes.watch
import urllib3.exceptions
from prometheus_client import CollectorRegistry, Counter, start_http_server

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from tars_api.meta import now
from tars_api.replica import TarsReplica, TarsReplicaStatus
from tars_operator import replicas
from tars_operator.config import OperatorConfig
from tars_operator.kube import TARS_REPLICAS, ApiError, KubeClient, load_configuration

RETRY_SECONDS = 1.0
REGISTRY = CollectorRegistry()
RECONCILES = Counter(
    "bench_minimal_reconciles", "TarsReplicas reconciled", ["result"], registry=REGISTRY
)


class WorkQueue:
    """Names to reconcile, each at most once in the queue and with at most one worker.

    A name that changes while a worker has it is queued again when the worker is done.
    """

    def __init__(self) -> None:
        self._names: queue.Queue[str] = queue.Queue()
        self._queued: set[str] = set()
        self._busy: set[str] = set()
        self._again: set[str] = set()
        self._lock = threading.Lock()

    def add(self, name: str) -> None:
        with self._lock:
            if name in self._busy:
                self._again.add(name)
                return
            if name in self._queued:
                return
            self._queued.add(name)
        self._names.put(name)

    def take(self) -> str:
        name = self._names.get()
        with self._lock:
            self._queued.discard(name)
            self._busy.add(name)
        return name

    def done(self, name: str) -> None:
        with self._lock:
            self._busy.discard(name)
            again = name in self._again
            self._again.discard(name)
        if again:
            self.add(name)


class MinimalController:
    def __init__(self, kube: KubeClient, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.config = OperatorConfig()
        self.latest: dict[str, dict[str, Any]] = {}
        self.latest_lock = threading.Lock()
        self.work = WorkQueue()

    def observe(self, event_type: str, replica: dict[str, Any]) -> None:
        name = replica["metadata"]["name"]
        with self.latest_lock:
            if event_type == "DELETED":
                self.latest.pop(name, None)
                return
            before = self.latest.get(name)
            self.latest[name] = replica
        generation_changed = (
            before is None or before["metadata"]["generation"] != replica["metadata"]["generation"]
        )
        if event_type == "ADDED" or generation_changed:
            self.work.add(name)

    def reconcile(self, name: str) -> None:
        with self.latest_lock:
            current = self.latest.get(name)
        if current is None or current["metadata"].get("deletionTimestamp"):
            return
        replica = TarsReplica.model_validate(current)
        deployment = self.kube.apply(replicas.desired_deployment(replica, self.config))
        self.kube.apply(replicas.desired_service(replica, self.config))
        previous = replica.status or TarsReplicaStatus()
        if previous.observed_generation != replica.metadata.generation:
            status = replicas.replica_status(deployment, previous, self.config, now=now())
            self.kube.patch_status(TARS_REPLICAS, self.namespace, name, status.to_dict())

    def work_loop(self) -> None:
        while True:
            name = self.work.take()
            try:
                self.reconcile(name)
                RECONCILES.labels(result="success").inc()
            except (ApiError, urllib3.exceptions.HTTPError) as error:
                RECONCILES.labels(result="error").inc()
                print(f"reconciling {name}: {error}", file=sys.stderr, flush=True)
                threading.Timer(RETRY_SECONDS, self.work.add, [name]).start()
            finally:
                self.work.done(name)

    def watch_loop(self, api: kubernetes.client.CustomObjectsApi) -> None:
        # Watch resumes from the last resourceVersion it saw when the server ends a watch.
        for event in kubernetes.watch.Watch().stream(
            api.list_namespaced_custom_object,
            TARS_REPLICAS.group, TARS_REPLICAS.version, self.namespace, TARS_REPLICAS.plural,
        ):  # fmt: skip
            self.observe(event["type"], event["object"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--metrics-port", type=int, required=True)
    arguments = parser.parse_args(argv)
    configuration = load_configuration(arguments.kubeconfig)
    controller = MinimalController(
        KubeClient(configuration, pool_size=arguments.workers), arguments.namespace
    )
    for _ in range(arguments.workers):
        threading.Thread(target=controller.work_loop, daemon=True).start()
    start_http_server(arguments.metrics_port, addr="127.0.0.1", registry=REGISTRY)
    watch_api = kubernetes.client.CustomObjectsApi(
        kubernetes.config.new_client_from_config(config_file=arguments.kubeconfig)
    )
    controller.watch_loop(watch_api)
    return 0


if __name__ == "__main__":
    sys.exit(main())
