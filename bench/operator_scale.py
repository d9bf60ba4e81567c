"""How fast the operator turns N TarsReplicas into their children, against doing it by hand.

    .venv/bin/python bench/operator_scale.py [--count 200] [--kubeconfig FILE] [--concurrency 8]

Without --kubeconfig it starts its own control plane (hack/devcluster.py) with the tools
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
from functools import partial
from pathlib import Path
from typing import Any

import psutil

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY / "hack"))

import devcluster
from tars_api.replica import TarsReplica
from tars_engine.models import Role
from tars_operator import replicas
from tars_operator.config import OperatorConfig
from tars_operator.kube import (
    DEPLOYMENTS,
    SERVICES,
    TARS_REPLICAS,
    KubeClient,
    load_configuration,
)

OPERATOR = Path(sys.executable).parent / "tars-operator"
ROLES = [Role.analyzer, Role.generator, Role.tester, Role.coordinator]
SETTLE_SECONDS = 600
POLL_SECONDS = 0.25
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


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            self.stopped.wait(0.05)


def names(kube: KubeClient, path: str) -> set[str]:
    listed = kube.request("GET", path, accept=METADATA_LIST)
    return {item["metadata"]["name"] for item in listed.get("items", [])}


def reconciled(kube: KubeClient, namespace: str, count: int) -> int:
    """How many TarsReplicas have status.observedGeneration and both children.

    The children are listed only once every status is there: the check itself is API
    server load the baseline does not have.
    """
    listed = kube.request("GET", TARS_REPLICAS.path(namespace))
    observed = {
        item["metadata"]["name"]
        for item in listed.get("items", [])
        if (item.get("status") or {}).get("observedGeneration") is not None
    }
    if len(observed) < count:
        return len(observed)
    deployments = names(kube, DEPLOYMENTS.path(namespace))
    return len(observed & deployments & names(kube, SERVICES.path(namespace)))


def with_operator(
    kube: KubeClient, kubeconfig: Path, namespace: str, count: int, concurrency: int
) -> tuple[float, int]:
    log = Path(tempfile.mkstemp(prefix="tars-operator-bench-", suffix=".log")[1])
    liveness_port = devcluster.free_port()
    command = [
        str(OPERATOR), f"--kubeconfig={kubeconfig}", f"--namespace={namespace}",
        f"--liveness-port={liveness_port}", f"--metrics-port={devcluster.free_port()}",
        "--bind-address=127.0.0.1",
    ]  # fmt: skip
    with log.open("wb") as output:
        operator = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    sampler = RssSampler(operator.pid)
    sampler.start()
    try:
        deadline = time.monotonic() + SETTLE_SECONDS
        while not _live(liveness_port):
            if operator.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"tars-operator did not start; its log:\n{log.read_text()}")
            time.sleep(0.1)
        manifests = [replica.to_k8s() for replica in replica_objects(namespace, count)]
        path = TARS_REPLICAS.path(namespace)
        started = time.perf_counter()
        run_all(
            concurrency,
            [partial(kube.request, "POST", path, body=manifest) for manifest in manifests],
        )
        while (done := reconciled(kube, namespace, count)) < count:
            if operator.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"only {done}/{count} reconciled; operator log: {log}")
            time.sleep(POLL_SECONDS)
        elapsed = time.perf_counter() - started
    finally:
        operator.terminate()
        operator.wait(timeout=60)
        sampler.stopped.set()
        sampler.join()
    return elapsed, sampler.peak


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
    operated, peak_rss = with_operator(kube, kubeconfig, operator_namespace, count, concurrency)
    delete_namespace(kube, operator_namespace)
    return {
        "count": count,
        "concurrency": concurrency,
        "direct_seconds": round(direct, 3),
        "operator_seconds": round(operated, 3),
        "ratio": round(operated / direct, 3),
        "operator_peak_rss_mb": round(peak_rss / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--count", type=int, default=200, help="TarsReplicas to create (default 200)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="client threads, both phases (default 8)"
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
            plane = devcluster.up(Path(state), tools_dir())
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
                devcluster.down(Path(state))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
