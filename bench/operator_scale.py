"""How fast tars-operator reconciles N TarsReplicas, against the least a controller must do.

    .venv/bin/python bench/operator_scale.py [--count 1000] [--concurrency 16] [--kubeconfig FILE]

Without --kubeconfig it starts its own control plane (tests.harness.controlplane) with the tools
from TARS_TOOLS_DIR (or `hack/build-tools.sh`), and stops it afterwards.

Three controllers do the same job, one after the other, each in a fresh namespace and with
`--concurrency` workers. Once a controller has reconciled one warm-up replica (so that its
start-up is not in the figure), the bench creates N TarsReplicas with as many client threads
and times until every one has status.observedGeneration and its Deployment and Service exist:

1. minimal: bench/minimal_controller.py, the least a correct controller does per object
   (a watch, a work queue, server-side apply of the Deployment and Service, a status
   patch), with the operator's own client and builders. The ratio against it is kopf's
   and the operator's overhead.
2. controller-runtime: the same controller in Go (bench/controller-runtime), what a user
   would pick instead of kopf; built from the Go module proxy on first use and cached in
   ~/.cache/tars-selfcoding/bench-controller-runtime-<digest>. Its RSS includes the
   children it reads from the bench's file (about 4 MB of JSON at 1,000 replicas).
3. tars-operator itself.

Each controller is then restarted with the N replicas in place and timed until it has
reconciled every one again (its reconcile counter on /metrics): the relist and resync cost.
Throughout, the controller's RSS is sampled, the API server's write requests are counted
from its own /metrics (apiserver_request_total), and the CPU time of the control plane's
processes (with the bench's own control plane), of the bench and of the whole machine is
added up: whether the API server's write rate is bound by CPU shows there.

Goals: operator/minimal <= 1.3, operator/controller-runtime <= 1.3, operator peak RSS
<= 150 MB at 1,000 objects.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
import kubernetes.watch
import psutil
from prometheus_client.parser import text_string_to_metric_families

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from tars_api.meta import now
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
MINIMAL_CONTROLLER = REPOSITORY / "bench" / "minimal_controller.py"
CONTROLLER_RUNTIME_MODULE = REPOSITORY / "bench" / "controller-runtime"
CONTROLLER_RUNTIME_SOURCES = ("go.mod", "go.sum", "main.go")
CONTROLLER_RUNTIME_BINARY = "controller-runtime-bench"
ROLES = [Role.analyzer, Role.generator, Role.tester, Role.coordinator]
SETTLE_SECONDS = 900
POLL_SECONDS = 0.1
STOP_GRACE_SECONDS = 30
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
# apiserver_request_total's verbs that change state.
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})
CONTROL_PLANE = ("kube-apiserver", "etcd", "kube-controller-manager")
WARM_UP = "warm-up"
# Placeholder until the API server gives a created replica its uid.
NO_UID = "00000000-0000-0000-0000-000000000000"


def cache_root() -> Path:
    """Where hack/build-tools.sh keeps what it builds; the bench's binary goes beside it."""
    if os.environ.get("TARS_TOOLS_CACHE"):
        return Path(os.environ["TARS_TOOLS_CACHE"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "tars-selfcoding"


def tools_dir() -> Path:
    if os.environ.get("TARS_TOOLS_DIR"):
        return Path(os.environ["TARS_TOOLS_DIR"])
    built = subprocess.run(
        [str(REPOSITORY / "hack" / "build-tools.sh")], check=True, capture_output=True, text=True
    )
    return Path(built.stdout.strip().splitlines()[-1])


def controller_runtime_binary() -> Path:
    """The Go controller, built once per version of its sources."""
    digest = hashlib.sha256()
    for name in CONTROLLER_RUNTIME_SOURCES:
        digest.update((CONTROLLER_RUNTIME_MODULE / name).read_bytes())
    binary = (
        cache_root()
        / f"bench-controller-runtime-{digest.hexdigest()[:16]}"
        / CONTROLLER_RUNTIME_BINARY
    )
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise SystemExit("operator_scale: `go` is needed once to build bench/controller-runtime")
    print(f"building {binary} (once)", file=sys.stderr)
    partial_binary = binary.with_suffix(".partial")
    binary.parent.mkdir(parents=True, exist_ok=True)
    built = subprocess.run(
        [go, "build", "-trimpath", "-o", str(partial_binary), "."],
        cwd=CONTROLLER_RUNTIME_MODULE,
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0:
        raise SystemExit(
            f"operator_scale: building bench/controller-runtime failed:\n{built.stderr}"
        )
    partial_binary.rename(binary)
    return binary


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
        time.sleep(POLL_SECONDS)


def delete_namespace(kube: KubeClient, name: str) -> None:
    kube.request("DELETE", f"/api/v1/namespaces/{name}")
    deadline = time.monotonic() + SETTLE_SECONDS
    while kube.get_path(f"/api/v1/namespaces/{name}") is not None:
        if time.monotonic() > deadline:
            raise SystemExit(f"namespace {name} was not deleted within {SETTLE_SECONDS}s")
        time.sleep(0.5)


def warm_up(kube: KubeClient, namespace: str, label: str) -> None:
    """One replica reconciled before the clock starts: the figures leave start-up out."""
    kube.request("POST", TARS_REPLICAS.path(namespace), body=warm_up_replica(namespace).to_k8s())
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        current = kube.get(TARS_REPLICAS, namespace, WARM_UP)
        if current is not None and (current.get("status") or {}).get("observedGeneration"):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"{label} did not reconcile {WARM_UP} within {SETTLE_SECONDS}s")
        time.sleep(POLL_SECONDS)


def warm_up_replica(namespace: str) -> TarsReplica:
    return TarsReplica.build(WARM_UP, Role.analyzer, namespace=namespace)


def replica_objects(namespace: str, count: int) -> list[TarsReplica]:
    return [
        TarsReplica.build(f"replica-{index:04d}", ROLES[index % len(ROLES)], namespace=namespace)
        for index in range(count)
    ]


def children_file(path: Path, to_create: list[TarsReplica]) -> Path:
    """What the Go controller applies per replica: the operator's own children and status.

    Built here with the operator's pure functions so that every controller sends the same
    objects; the Go controller sets the owner reference once it knows the replica's uid.
    """
    config = OperatorConfig()
    wanted: dict[str, dict[str, Any]] = {}
    for replica in to_create:
        built = replica.model_copy(deep=True)
        built.metadata.uid = NO_UID
        built.metadata.generation = 1
        deployment = replicas.desired_deployment(built, config)
        service = replicas.desired_service(built, config)
        for child in (deployment, service):
            del child["metadata"]["ownerReferences"]
        status = replicas.replica_status(deployment, None, config, now=now()).to_dict()
        del status["observedGeneration"]
        wanted[replica.name] = {"deployment": deployment, "service": service, "status": status}
    path.write_text(json.dumps(wanted))
    return path


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
    controllers share with it.
    """

    def __init__(self, kubeconfig: Path, namespace: str, expected: set[str]) -> None:
        super().__init__(daemon=True)
        self.api = kubernetes.client.CustomObjectsApi(
            kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        )
        self.namespace = namespace
        self.expected = expected
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
            name, generation = replica["metadata"]["name"], replica["metadata"].get("generation")
            if name in self.expected and (
                (replica.get("status") or {}).get("observedGeneration") == generation
            ):
                self.observed.add(name)
            if len(self.observed) >= len(self.expected):
                self.done.set()
                self.watch.stop()


def children_exist(kube: KubeClient, namespace: str, expected: set[str]) -> bool:
    for resource in (DEPLOYMENTS, SERVICES):
        listed = kube.request("GET", resource.path(namespace), accept=METADATA_LIST)
        if not expected <= {item["metadata"]["name"] for item in listed.get("items", [])}:
            return False
    return True


def _get_text(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return None


def counter_sum(metrics_text: str, sample: str, labels: Mapping[str, str]) -> float:
    """The sum of the samples named `sample` whose labels include `labels`."""
    return sum(
        entry.value
        for family in text_string_to_metric_families(metrics_text)
        for entry in family.samples
        if entry.name == sample and all(entry.labels.get(k) == v for k, v in labels.items())
    )


class ApiServerMetrics:
    """The API server's own request counters, read through the admin's client."""

    def __init__(self, configuration: kubernetes.client.Configuration) -> None:
        self._api = kubernetes.client.ApiClient(configuration)

    def writes(self) -> Counter[str]:
        """Write requests served so far, by resource."""
        _, url, headers, _, _ = self._api.param_serialize(
            method="GET", resource_path="/metrics", auth_settings=["BearerToken"]
        )
        response = self._api.call_api("GET", url, header_params=headers)
        text = response.read().decode()
        counts: Counter[str] = Counter()
        for family in text_string_to_metric_families(text):
            for entry in family.samples:
                if (
                    entry.name == "apiserver_request_total"
                    and entry.labels.get("verb") in WRITE_VERBS
                ):
                    resource = entry.labels.get("resource", "")
                    if entry.labels.get("subresource"):
                        resource += "/" + entry.labels["subresource"]
                    counts[resource] += int(entry.value)
        return counts


@dataclass
class CpuClock:
    """CPU seconds used by the control plane's processes (when the bench started them) and itself."""

    pids: dict[str, int] = field(default_factory=dict)

    def read(self) -> dict[str, float]:
        used = {}
        for component, pid in self.pids.items():
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.NoSuchProcess:
                continue
            used[component] = times.user + times.system
        mine = psutil.Process().cpu_times()
        used["bench"] = mine.user + mine.system
        machine = psutil.cpu_times()
        # guest time is counted in user time already.
        idle = machine.idle + machine.iowait + machine.guest + machine.guest_nice
        used["machine busy"] = sum(machine) - idle
        used["machine total"] = sum(machine) - machine.guest - machine.guest_nice
        return used


@dataclass(frozen=True)
class Controller:
    """One controller under test: how to start it, and how it tells readiness and progress."""

    label: str
    command: Callable[[Path, str, int, int, Path], list[str]]
    """(kubeconfig, namespace, metrics port, readiness port, children file) -> argv"""
    ready_path: str
    """GET this on the readiness port: 200 once the controller is watching."""
    reconciles_sample: str
    reconciles_labels: Mapping[str, str]

    def reconciles(self, metrics_port: int) -> float | None:
        text = _get_text(f"http://127.0.0.1:{metrics_port}/metrics")
        if text is None:
            return None
        return counter_sum(text, self.reconciles_sample, self.reconciles_labels)


def controllers(workers: int) -> list[Controller]:
    def minimal(kubeconfig: Path, namespace: str, metrics: int, _ready: int, _: Path) -> list[str]:
        return [
            sys.executable, str(MINIMAL_CONTROLLER), f"--kubeconfig={kubeconfig}",
            f"--namespace={namespace}", f"--workers={workers}", f"--metrics-port={metrics}",
        ]  # fmt: skip

    def go(kubeconfig: Path, namespace: str, metrics: int, ready: int, wanted: Path) -> list[str]:
        return [
            str(controller_runtime_binary()), f"--kubeconfig={kubeconfig}",
            f"--namespace={namespace}", f"--children={wanted}", f"--workers={workers}",
            f"--metrics-bind-address=127.0.0.1:{metrics}",
            f"--health-probe-bind-address=127.0.0.1:{ready}",
        ]  # fmt: skip

    def operator(kubeconfig: Path, namespace: str, metrics: int, ready: int, _: Path) -> list[str]:
        return [
            str(OPERATOR), f"--kubeconfig={kubeconfig}", f"--namespace={namespace}",
            f"--liveness-port={ready}", f"--metrics-port={metrics}",
            "--bind-address=127.0.0.1", f"--workers={workers}",
        ]  # fmt: skip

    return [
        # The minimal controller has no readiness endpoint: /metrics answers once it runs.
        Controller("minimal", minimal, "", "bench_minimal_reconciles_total", {"result": "success"}),
        Controller(
            "controller-runtime",
            go,
            "/readyz",
            "controller_runtime_reconcile_total",
            {"controller": "tarsreplica", "result": "success"},
        ),
        Controller(
            "tars-operator",
            operator,
            "/healthz",
            "tars_operator_reconciles_total",
            {"kind": "TarsReplica"},
        ),
    ]


@dataclass(frozen=True)
class Figures:
    seconds: float
    peak_rss: int
    cpu_seconds: float
    writes: Counter[str]
    control_plane_cpu: dict[str, float]
    restart_seconds: float
    restart_peak_rss: int
    exit_seconds: float | None
    """From SIGTERM to exit after the first phase; None: killed after STOP_GRACE_SECONDS."""

    @property
    def write_count(self) -> int:
        return sum(self.writes.values())


class RunningController:
    """A controller process, its RSS sampler and its ports; stopped on exit."""

    def __init__(
        self, controller: Controller, kubeconfig: Path, namespace: str, children: Path, log: Path
    ) -> None:
        self.controller = controller
        self.metrics_port = controlplane.free_port()
        ready_port = controlplane.free_port()
        self.ready_url = (
            f"http://127.0.0.1:{ready_port}{controller.ready_path}"
            if controller.ready_path
            else f"http://127.0.0.1:{self.metrics_port}/metrics"
        )
        self.log = log
        self.started = time.perf_counter()
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                controller.command(kubeconfig, namespace, self.metrics_port, ready_port, children),
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.sampler = ProcessSampler(self.process.pid)
        self.sampler.start()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + SETTLE_SECONDS
        while _get_text(self.ready_url) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"{self.controller.label} did not start; its log:\n{self.log.read_text()}"
                )
            time.sleep(POLL_SECONDS)

    def wait_reconciles(self, count: int) -> float:
        """Seconds from the start of the process until it has reconciled `count` objects."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while (self.controller.reconciles(self.metrics_port) or 0) < count:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"{self.controller.label} did not reconcile {count} again; log: {self.log}"
                )
            time.sleep(POLL_SECONDS)
        return time.perf_counter() - self.started

    def stop(self) -> float | None:
        """SIGTERM; the seconds it took to exit, or None when it had to be killed."""
        self.process.terminate()
        signalled = time.perf_counter()
        try:
            self.process.wait(timeout=STOP_GRACE_SECONDS)
            exited: float | None = time.perf_counter() - signalled
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            exited = None
        self.sampler.stopped.set()
        self.sampler.join()
        return exited


def measure(
    controller: Controller,
    kube: KubeClient,
    kubeconfig: Path,
    namespace: str,
    count: int,
    concurrency: int,
    apiserver: ApiServerMetrics,
    clock: CpuClock,
    workdir: Path,
) -> Figures:
    to_create = replica_objects(namespace, count)
    children = children_file(
        workdir / f"{namespace}-children.json", [warm_up_replica(namespace), *to_create]
    )
    log = workdir / f"{namespace}.log"
    running = RunningController(controller, kubeconfig, namespace, children, log)
    try:
        running.wait_ready()
        warm_up(kube, namespace, controller.label)
        expected = {replica.name for replica in to_create}
        writes_before, cpu_before = apiserver.writes(), clock.read()
        watch = ReconciledWatch(kubeconfig, namespace, expected)
        watch.start()
        started = time.perf_counter()
        path = TARS_REPLICAS.path(namespace)
        run_all(
            concurrency,
            [partial(kube.request, "POST", path, body=replica.to_k8s()) for replica in to_create],
        )
        if not watch.done.wait(timeout=SETTLE_SECONDS):
            raise SystemExit(
                f"{controller.label}: only {len(watch.observed)}/{count} reconciled; log: {log}"
            )
        deadline = time.monotonic() + SETTLE_SECONDS
        while not children_exist(kube, namespace, expected):
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"{controller.label}: children missing after every status; log: {log}"
                )
            time.sleep(POLL_SECONDS)
        elapsed = time.perf_counter() - started
        writes, cpu_after = apiserver.writes() - writes_before, clock.read()
    finally:
        exit_seconds = running.stop()
    first_rss, first_cpu = running.sampler.peak_rss, running.sampler.cpu_seconds
    restarted = RunningController(controller, kubeconfig, namespace, children, log)
    try:
        # The warm-up replica is reconciled again too.
        restart_seconds = restarted.wait_reconciles(count + 1)
    finally:
        restarted.stop()
    return Figures(
        seconds=elapsed,
        peak_rss=first_rss,
        cpu_seconds=first_cpu,
        writes=writes,
        control_plane_cpu={name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after},
        restart_seconds=restart_seconds,
        restart_peak_rss=restarted.sampler.peak_rss,
        exit_seconds=exit_seconds,
    )


def bench(
    kubeconfig: Path, count: int, concurrency: int, pids: dict[str, int], workdir: Path
) -> dict[str, Any]:
    configuration = load_configuration(str(kubeconfig))
    kube = KubeClient(configuration, pool_size=concurrency)
    apiserver = ApiServerMetrics(load_configuration(str(kubeconfig)))
    clock = CpuClock(pids)
    suffix = str(int(time.time()))
    results: dict[str, Any] = {"count": count, "concurrency": concurrency, "cores": os.cpu_count()}
    for controller in controllers(concurrency):
        namespace = f"bench-{controller.label}-{suffix}"
        create_namespace(kube, namespace)
        figures = measure(
            controller, kube, kubeconfig, namespace, count, concurrency, apiserver, clock, workdir
        )
        # Its pods would otherwise still be created while the next controller is measured.
        delete_namespace(kube, namespace)
        results[controller.label] = {
            "seconds": round(figures.seconds, 3),
            "peak_rss_mb": round(figures.peak_rss / 2**20, 1),
            "cpu_seconds": round(figures.cpu_seconds, 1),
            "restart_seconds": round(figures.restart_seconds, 3),
            "restart_peak_rss_mb": round(figures.restart_peak_rss / 2**20, 1),
            "apiserver_writes": figures.write_count,
            "apiserver_writes_per_second": round(figures.write_count / figures.seconds, 1),
            "writes_by_resource": dict(figures.writes.most_common()),
            "cpu_seconds_by_process": {
                k: round(v, 1) for k, v in figures.control_plane_cpu.items()
            },
            "exit_seconds": None
            if figures.exit_seconds is None
            else round(figures.exit_seconds, 1),
        }
        # A later failure must not take the figures measured so far with it.
        print(json.dumps({controller.label: results[controller.label]}), file=sys.stderr)
    operator = results["tars-operator"]["seconds"]
    results["ratio_to_minimal"] = round(operator / results["minimal"]["seconds"], 3)
    results["ratio_to_controller_runtime"] = round(
        operator / results["controller-runtime"]["seconds"], 3
    )
    return results


def report(figures: dict[str, Any]) -> None:
    labels = [label for label in ("minimal", "controller-runtime", "tars-operator")]
    print(
        f"TarsReplicas: {figures['count']}, concurrency {figures['concurrency']}, {figures['cores']} cores"
    )
    header = f"{'':38}" + "".join(f"{label:>20}" for label in labels)
    print(header)
    rows = [
        ("create and reconcile all (s)", "seconds", "{:.2f}"),
        ("peak RSS (MB)", "peak_rss_mb", "{:.1f}"),
        ("controller CPU (s)", "cpu_seconds", "{:.1f}"),
        ("API server writes", "apiserver_writes", "{:d}"),
        ("API server writes/s", "apiserver_writes_per_second", "{:.1f}"),
        ("restart: all reconciled again (s)", "restart_seconds", "{:.2f}"),
        ("restart: peak RSS (MB)", "restart_peak_rss_mb", "{:.1f}"),
    ]
    for title, key, form in rows:
        print(
            f"{title:38}" + "".join(f"{form.format(figures[label][key]):>20}" for label in labels)
        )
    exits = [figures[label]["exit_seconds"] for label in labels]
    print(
        f"{'exit after SIGTERM (s)':38}"
        + "".join(
            f"{'killed after ' + str(STOP_GRACE_SECONDS) if value is None else value:>20}"
            for value in exits
        )
    )
    for label in labels:
        cpu = figures[label]["cpu_seconds_by_process"]
        print(
            f"CPU seconds during {label}: "
            + ", ".join(f"{k} {v}" for k, v in cpu.items() if k != "machine total")
            + f" (machine busy {100 * cpu['machine busy'] / cpu['machine total']:.0f}%)"
        )
        writes = figures[label]["writes_by_resource"]
        print(f"writes during {label}: " + ", ".join(f"{k} {v}" for k, v in writes.items()))
    print(f"ratio to minimal:             {figures['ratio_to_minimal']:.2f} (goal <= 1.3)")
    print(
        f"ratio to controller-runtime:  {figures['ratio_to_controller_runtime']:.2f} (goal <= 1.3)"
    )
    print(
        f"operator peak RSS:            {figures['tars-operator']['peak_rss_mb']:.1f} MB (goal <= 150 MB)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--count", type=int, default=1000, help="TarsReplicas to create (default 1000)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="client threads and controller workers (default 16)",
    )
    parser.add_argument(
        "--kubeconfig", type=Path, help="use this cluster (CRDs installed) instead of a fresh one"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    arguments = parser.parse_args(argv)
    if arguments.count < 1 or arguments.concurrency < 1:
        parser.error("--count and --concurrency must be at least 1")
    # Built before anything is timed.
    controller_runtime_binary()
    with tempfile.TemporaryDirectory(prefix="tars-bench-") as state:
        pids: dict[str, int] = {}
        if arguments.kubeconfig is not None:
            kubeconfig = arguments.kubeconfig
        else:
            plane = controlplane.up(Path(state), tools_dir())
            kubeconfig = plane.kubeconfig
            pids = {name: plane.pids[name] for name in CONTROL_PLANE}
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
        workdir = Path(tempfile.mkdtemp(prefix="tars-bench-logs-"))
        try:
            figures = bench(kubeconfig, arguments.count, arguments.concurrency, pids, workdir)
        finally:
            if arguments.kubeconfig is None:
                controlplane.down(Path(state))
    if arguments.json:
        print(json.dumps(figures))
    else:
        report(figures)
        print(f"controller logs: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
