"""How fast the operator turns N TarsReplicas into their children, against doing it by hand.

    .venv/bin/python bench/operator_scale.py [--count 200] [--kubeconfig FILE] [--concurrency 1]

Without --kubeconfig it starts its own control plane (tests.harness.controlplane) with the tools
from TARS_TOOLS_DIR (or `hack/build-tools.sh`), and stops it afterwards.

1. Baseline: create the same Deployments and Services the operator would build, with the
   operator's own client and the same concurrency, and time it.
2. Operator: start `tars-operator` for a fresh namespace, create N TarsReplicas, and time
   until every one is reconciled (Deployment and Service exist, status.observedGeneration
   set), sampling the operator's RSS (psutil) throughout.

It prints both times, their ratio (goal <= 1.3) and the operator's peak RSS (goal < 150 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
import kubernetes.watch
import psutil

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from tars_api.replica import TarsReplica
from tars_api.vocabulary import Role
from tars_operator import replicas
from tars_operator.config import OperatorConfig
from tars_operator.kube import (
    DEPLOYMENTS,
    SERVICES,
    TARS_REPLICAS,
    KubeClient,
    load_configuration,
)

from tests.harness import controlplane

OPERATOR = Path(sys.executable).parent / "tars-operator"
ROLES = [Role.analyzer, Role.generator, Role.tester, Role.coordinator]
SETTLE_SECONDS = 600
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


def tools_dir() -> Path:
    if os.environ.get("TARS_TOOLS_DIR"):
        return Path(os.environ["TARS_TOOLS_DIR"])
    built = subprocess.run(
        [str(REPOSITORY / "hack" / "build-tools.sh")], check=True, capture_output=True, text=True
    )
    return Path(built.stdout.strip().splitlines()[-1])


def run_all(concurrency: int, tasks: Iterable[Callable[[], object]]) -> None:
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(task) for task in tasks]:
            future.result()


def create_namespace(kube: KubeClient, name: str) -> None:
    kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": name}})
    deadline = time.monotonic() + SETTLE_SECONDS
    # Pods are refused until the controller-manager made the namespace's default ServiceAccount.
    while kube.get_path(f"/api/v1/namespaces/{name}/serviceaccounts/default") is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"namespace {name} never got its default ServiceAccount")
        time.sleep(0.1)


def delete_namespace(kube: KubeClient, name: str) -> None:
    kube.request("DELETE", f"/api/v1/namespaces/{name}")
    deadline = time.monotonic() + SETTLE_SECONDS
    while kube.get_path(f"/api/v1/namespaces/{name}") is not None:
        if time.monotonic() > deadline:
            raise SystemExit(f"namespace {name} was not deleted within {SETTLE_SECONDS}s")
        time.sleep(0.5)


def replica_objects(namespace: str, count: int) -> list[TarsReplica]:
    built = []
    for index in range(count):
        replica = TarsReplica.build(
            f"replica-{index:04d}", ROLES[index % len(ROLES)], namespace=namespace
        )
        # The baseline has no owner to point at; the children are otherwise identical.
        replica.metadata.uid = "00000000-0000-0000-0000-000000000000"
        replica.metadata.generation = 1
        built.append(replica)
    return built


def baseline(kube: KubeClient, namespace: str, count: int, concurrency: int) -> float:
    config = OperatorConfig()
    manifests = []
    for replica in replica_objects(namespace, count):
        for manifest in (
            replicas.desired_deployment(replica, config),
            replicas.desired_service(replica, config),
        ):
            del manifest["metadata"]["ownerReferences"]
            manifests.append(manifest)
    started = time.perf_counter()
    run_all(concurrency, [partial(kube.apply, manifest) for manifest in manifests])
    return time.perf_counter() - started


class ProcessSampler(threading.Thread):
    """Samples a process's RSS until stopped; keeps the peak and the last CPU time."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak_rss = 0
        self.cpu_seconds = 0.0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
                times = self.process.cpu_times()
                self.cpu_seconds = times.user + times.system
            except psutil.NoSuchProcess:
                return
            self.stopped.wait(0.05)


class ReconciledWatch(threading.Thread):
    """Watches the namespace's TarsReplicas and notes those whose status has observedGeneration.

    A watch, not a polling loop: the measurement must not load the API server the
    baseline never had to share.
    """

    def __init__(self, kubeconfig: Path, namespace: str, count: int) -> None:
        super().__init__(daemon=True)
        self.api = kubernetes.client.CustomObjectsApi(
            kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        )
        self.namespace = namespace
        self.count = count
        self.observed: set[str] = set()
        self.done = threading.Event()
        self.watch = kubernetes.watch.Watch()

    def run(self) -> None:
        stream = self.watch.stream(
            self.api.list_namespaced_custom_object,
            TARS_REPLICAS.group, TARS_REPLICAS.version, self.namespace, TARS_REPLICAS.plural,
            timeout_seconds=SETTLE_SECONDS,
        )  # fmt: skip
        for event in stream:
            replica = event["object"]
            if (replica.get("status") or {}).get("observedGeneration") is not None:
                self.observed.add(replica["metadata"]["name"])
            if len(self.observed) >= self.count:
                self.done.set()
                self.watch.stop()


def children_exist(kube: KubeClient, namespace: str, expected: set[str]) -> bool:
    for resource in (DEPLOYMENTS, SERVICES):
        listed = kube.request("GET", resource.path(namespace), accept=METADATA_LIST)
        if not expected <= {item["metadata"]["name"] for item in listed.get("items", [])}:
            return False
    return True


@dataclass(frozen=True)
class OperatorFigures:
    seconds: float
    peak_rss: int
    cpu_seconds: float


def with_operator(
    kube: KubeClient, kubeconfig: Path, namespace: str, count: int, concurrency: int
) -> OperatorFigures:
    log = Path(tempfile.mkstemp(prefix="tars-operator-bench-", suffix=".log")[1])
    liveness_port = controlplane.free_port()
    command = [
        str(OPERATOR), f"--kubeconfig={kubeconfig}", f"--namespace={namespace}",
        f"--liveness-port={liveness_port}", f"--metrics-port={controlplane.free_port()}",
        "--bind-address=127.0.0.1",
    ]  # fmt: skip
    with log.open("wb") as output:
        operator = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    sampler = ProcessSampler(operator.pid)
    sampler.start()
    try:
        deadline = time.monotonic() + SETTLE_SECONDS
        while not _live(liveness_port):
            if operator.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"tars-operator did not start; its log:\n{log.read_text()}")
            time.sleep(0.1)
        replicas_to_create = replica_objects(namespace, count)
        watch = ReconciledWatch(kubeconfig, namespace, count)
        watch.start()
        path = TARS_REPLICAS.path(namespace)
        started = time.perf_counter()
        run_all(
            concurrency,
            [
                partial(kube.request, "POST", path, body=replica.to_k8s())
                for replica in replicas_to_create
            ],
        )
        if not watch.done.wait(timeout=SETTLE_SECONDS):
            raise SystemExit(f"only {len(watch.observed)}/{count} reconciled; operator log: {log}")
        expected = {replica.name for replica in replicas_to_create}
        while not children_exist(kube, namespace, expected):
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"children missing after every status was written; operator log: {log}"
                )
            time.sleep(0.1)
        elapsed = time.perf_counter() - started
    finally:
        operator.terminate()
        operator.wait(timeout=60)
        sampler.stopped.set()
        sampler.join()
    return OperatorFigures(elapsed, sampler.peak_rss, sampler.cpu_seconds)


def _live(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def bench(kubeconfig: Path, count: int, concurrency: int) -> dict[str, Any]:
    kube = KubeClient(load_configuration(str(kubeconfig)), pool_size=concurrency)
    suffix = str(int(time.time()))
    direct_namespace, operator_namespace = f"bench-direct-{suffix}", f"bench-operator-{suffix}"
    create_namespace(kube, direct_namespace)
    direct = baseline(kube, direct_namespace, count, concurrency)
    # Its pods would otherwise still be created while the operator is measured.
    delete_namespace(kube, direct_namespace)
    create_namespace(kube, operator_namespace)
    operated = with_operator(kube, kubeconfig, operator_namespace, count, concurrency)
    delete_namespace(kube, operator_namespace)
    return {
        "count": count,
        "concurrency": concurrency,
        "direct_seconds": round(direct, 3),
        "operator_seconds": round(operated.seconds, 3),
        "ratio": round(operated.seconds / direct, 3),
        "operator_peak_rss_mb": round(operated.peak_rss / 2**20, 1),
        "operator_cpu_seconds": round(operated.cpu_seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--count", type=int, default=200, help="TarsReplicas to create (default 200)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=1, help="client threads, both phases (default 1)"
    )
    parser.add_argument(
        "--kubeconfig", type=Path, help="use this cluster (CRDs installed) instead of a fresh one"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    arguments = parser.parse_args(argv)
    if arguments.count < 1 or arguments.concurrency < 1:
        parser.error("--count and --concurrency must be at least 1")
    with tempfile.TemporaryDirectory(prefix="tars-bench-") as state:
        if arguments.kubeconfig is not None:
            kubeconfig = arguments.kubeconfig
        else:
            plane = controlplane.up(Path(state), tools_dir())
            kubeconfig = plane.kubeconfig
            crds = sorted(str(path) for path in (REPOSITORY / "crds").glob("*.yaml"))
            kubectl = [str(plane.tools_dir / "kubectl"), f"--kubeconfig={kubeconfig}"]
            files = [argument for crd in crds for argument in ("-f", crd)]
            subprocess.run(
                [*kubectl, "apply", "--server-side", *files], check=True, capture_output=True
            )
            subprocess.run(
                [*kubectl, "wait", "--for=condition=Established", *files],
                check=True,
                capture_output=True,
            )
        try:
            figures = bench(kubeconfig, arguments.count, arguments.concurrency)
        finally:
            if arguments.kubeconfig is None:
                controlplane.down(Path(state))
    if arguments.json:
        print(json.dumps(figures))
        return 0
    print(
        f"TarsReplicas:          {figures['count']} (client concurrency {figures['concurrency']})"
    )
    print(
        f"direct (baseline):     {figures['direct_seconds']:.2f} s to create {2 * figures['count']} Deployments+Services"
    )
    print(
        f"through the operator:  {figures['operator_seconds']:.2f} s to create the TarsReplicas and reconcile all"
    )
    print(f"ratio:                 {figures['ratio']:.2f} (goal <= 1.3)")
    print(f"operator peak RSS:     {figures['operator_peak_rss_mb']:.1f} MB (goal < 150 MB)")
    print(f"operator CPU time:     {figures['operator_cpu_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
