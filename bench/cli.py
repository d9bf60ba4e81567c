"""How fast `tarscli` answers, against `kubectl` asking the same API server the same thing.

    .venv/bin/python bench/cli.py [--runs 15] [--watch-seconds 60] [--kubeconfig FILE]

It needs the tools `make tools` builds, named by TARS_TOOLS_DIR: kubectl, and without
--kubeconfig the control plane it starts (tests.harness.controlplane), installs the CRDs
in and stops afterwards. In a namespace of its own it creates a SelfCodingRun with a
status (conditions, statistics, latest results) and the four role TarsReplicas, then,
alternating the two commands of each pair for --runs rounds after one warm-up each:

- `tarscli self-code status RUN` against `kubectl get scr RUN`;
- `tarscli replica list` against `kubectl get tr`;
- `tarscli --help` against `kubectl --help`.

It prints the median wall time of each and their ratio (goal: 1.2 or less), the median CPU
time (user and system) and its ratio, which load on the machine disturbs less, and each
command's peak RSS (the child's own ru_maxrss, from wait4). Then it follows the run for
--watch-seconds with `tarscli self-code status RUN --watch` and, as the baseline, with
`kubectl get scr RUN --watch`, changing the run's status every few seconds meanwhile, and
prints the requests each made for selfcodingruns by verb (the API server's
apiserver_request_total, less what the status changes cost). Last, the slowest imports of
`python -X importtime -c "import tarscli.app"`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from tars_api.meta import Condition, ObjectMeta
from tars_api.names import DEFAULT_UPLOAD_KEY, REPLICA_PORT
from tars_api.replica import ReplicaPhase, TarsReplica, TarsReplicaStatus
from tars_api.run import (
    RunSource,
    SelfCodingRun,
    SelfCodingRunSpec,
    SelfCodingRunStatus,
    UploadSource,
)
from tars_api.vocabulary import Role

from tests.harness import controlplane

TARSCLI = Path(sys.executable).parent / "tarscli"
RATIO_GOAL = 1.2
NAMESPACE = "tars-bench-cli"
RUN_NAME = "bench-run"
STATUS_CHANGE_SECONDS = 5
# apiserver_request_total{...,resource="selfcodingruns",...,verb="GET"} 12
REQUEST_METRIC = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


@dataclass(frozen=True)
class Timing:
    seconds: float
    cpu_seconds: float
    max_rss_kib: int


def timed(argv: list[str]) -> Timing:
    """Wall time, CPU time and peak RSS of one run of `argv`, which must succeed."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    errors = child.stderr.read().decode() if child.stderr else ""
    if child.returncode != 0:
        raise RuntimeError(f"{argv} failed ({child.returncode}): {errors}")
    # Linux reports ru_maxrss in KiB.
    return Timing(elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)


def compare(ours: list[str], baseline: list[str], runs: int) -> dict[str, float]:
    """Medians of the two commands, run alternately after one warm-up each."""
    timed(ours)
    timed(baseline)
    mine: list[Timing] = []
    theirs: list[Timing] = []
    for _ in range(runs):
        mine.append(timed(ours))
        theirs.append(timed(baseline))
    ours_seconds = statistics.median(item.seconds for item in mine)
    baseline_seconds = statistics.median(item.seconds for item in theirs)
    ours_cpu = statistics.median(item.cpu_seconds for item in mine)
    baseline_cpu = statistics.median(item.cpu_seconds for item in theirs)
    return {
        "tarscli_seconds": round(ours_seconds, 4),
        "kubectl_seconds": round(baseline_seconds, 4),
        "ratio": round(ours_seconds / baseline_seconds, 2),
        "tarscli_cpu_seconds": round(ours_cpu, 4),
        "kubectl_cpu_seconds": round(baseline_cpu, 4),
        "cpu_ratio": round(ours_cpu / baseline_cpu, 2),
        "tarscli_max_rss_mib": round(max(item.max_rss_kib for item in mine) / 1024, 1),
        "kubectl_max_rss_mib": round(max(item.max_rss_kib for item in theirs) / 1024, 1),
    }


def run_status(step: int) -> dict[str, object]:
    """A Running run's status as the operator writes it, a little further at every step."""
    return SelfCodingRunStatus.model_validate({
        "phase": "Running",
        "stage": "Testing",
        "currentFile": f"src/pkg/module_{step}.py",
        "progress": f"{step}/40",
        "observedGeneration": 1,
        "startTime": "2026-01-01T00:00:00Z",
        "statistics": {
            "filesTotal": 40,
            "filesProcessed": step,
            "improvementsProposed": 2 * step,
            "improvementsAccepted": step,
            "testRuns": step + 1,
        },
        "conditions": [
            Condition.make("ReplicasReady", True, "AllRolesReady", "every role has a ready replica").to_dict()
        ],
        "latestResults": [
            {"path": f"src/pkg/module_{index}.py", "outcome": "Accepted", "attempts": 1,
             "message": "removed an unused import"}
            for index in range(min(step, 10))
        ],
    }).to_dict()  # fmt: skip


def replica_status(replica: TarsReplica) -> dict[str, object]:
    return TarsReplicaStatus(
        phase=ReplicaPhase.ready,
        replicas=1,
        ready_replicas=1,
        observed_generation=1,
        endpoint=f"http://{replica.name}.{NAMESPACE}.svc:{REPLICA_PORT}",
        conditions=[Condition.make("Ready", True, "PodsReady", "1/1 pods ready")],
    ).to_dict()


def create_objects(kubectl: list[str]) -> None:
    subprocess.run([*kubectl, "create", "namespace", NAMESPACE], check=True, capture_output=True)
    run = SelfCodingRun(
        metadata=ObjectMeta(name=RUN_NAME, namespace=NAMESPACE),
        spec=SelfCodingRunSpec(
            targets=["src"],
            source=RunSource(
                upload=UploadSource(config_map="bench-upload", key=DEFAULT_UPLOAD_KEY)
            ),
        ),
    )
    replicas = [TarsReplica.build(role.value, role, namespace=NAMESPACE) for role in Role]
    documents = [run.to_k8s(), *(replica.to_k8s() for replica in replicas)]
    subprocess.run(
        [*kubectl, "create", "-f", "-"],
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": documents}),
        check=True,
        capture_output=True,
        text=True,
    )
    patch_status(kubectl, "selfcodingrun", RUN_NAME, run_status(1))
    for replica in replicas:
        patch_status(kubectl, "tarsreplica", replica.name, replica_status(replica))


def patch_status(kubectl: list[str], kind: str, name: str, status: dict[str, object]) -> None:
    subprocess.run(
        [*kubectl, "-n", NAMESPACE, "patch", kind, name, "--subresource=status",
         "--type=merge", "-p", json.dumps({"status": status})],
        check=True, capture_output=True,
    )  # fmt: skip


def run_requests(kubectl: list[str]) -> Counter[str]:
    """apiserver_request_total for selfcodingruns, by verb, as the server counts them now."""
    metrics = subprocess.run(
        [*kubectl, "get", "--raw", "/metrics"], check=True, capture_output=True, text=True
    ).stdout
    counts: Counter[str] = Counter()
    for line in metrics.splitlines():
        match = REQUEST_METRIC.match(line)
        if match is None:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels.get("resource") == "selfcodingruns":
            counts[labels.get("verb", "?")] += int(float(match["value"]))
    return counts


def change_cost(kubectl: list[str], step: int) -> Counter[str]:
    """The selfcodingruns requests one status change makes (kubectl patch reads, then patches)."""
    before = run_requests(kubectl)
    patch_status(kubectl, "selfcodingrun", RUN_NAME, run_status(step))
    return run_requests(kubectl) - before


def watch_requests(kubectl: list[str], argv: list[str], seconds: int) -> dict[str, int]:
    """The selfcodingruns requests `argv` (a following command) makes while it runs for
    `seconds` and the run's status changes every few seconds (`changes`), less those the
    changes make themselves. The server counts a watch when it ends."""
    per_change = change_cost(kubectl, 1)
    before = run_requests(kubectl)
    follower = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + seconds
    changes = 0
    while time.monotonic() < deadline:
        time.sleep(min(STATUS_CHANGE_SECONDS, max(0.0, deadline - time.monotonic())))
        changes += 1
        patch_status(kubectl, "selfcodingrun", RUN_NAME, run_status(changes + 1))
    follower.send_signal(signal.SIGINT)
    follower.wait(timeout=30)
    # Give the server a moment to see the watch's connection close.
    time.sleep(2)
    made = run_requests(kubectl) - before
    for verb, count in per_change.items():
        made[verb] -= changes * count
    return {"changes": changes, **{verb: count for verb, count in sorted(made.items()) if count}}


def import_times(limit: int) -> tuple[float, list[tuple[float, str]]]:
    """The total and the slowest (cumulative) imports of `import tarscli.app`, in ms."""
    traced = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import tarscli.app"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    entries: list[tuple[float, str, int]] = []
    for line in traced.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)", line)
        if match:
            entries.append((int(match[1]) / 1000, match[3], len(match[2])))
    total = sum(cumulative for cumulative, _, depth in entries if depth == 0)
    slowest = sorted(((cumulative, name) for cumulative, name, _ in entries), reverse=True)
    return total, slowest[:limit]


def bench(
    kubeconfig: Path, kubectl_binary: Path, runs: int, watch_seconds: int
) -> dict[str, object]:
    kubectl = [str(kubectl_binary), f"--kubeconfig={kubeconfig}"]
    create_objects(kubectl)
    tarscli = [str(TARSCLI), "--kubeconfig", str(kubeconfig), "-n", NAMESPACE]
    in_namespace = [*kubectl, "-n", NAMESPACE]
    figures: dict[str, object] = {
        "runs": runs,
        "cores": os.cpu_count(),
        "status": compare(
            [str(TARSCLI), "self-code", "status", RUN_NAME, *tarscli[1:]],
            [*in_namespace, "get", "scr", RUN_NAME],
            runs,
        ),
        "replica_list": compare(
            [str(TARSCLI), "replica", "list", *tarscli[1:]], [*in_namespace, "get", "tr"], runs
        ),
        "help": compare([str(TARSCLI), "--help"], [str(kubectl_binary), "--help"], runs),
    }
    if watch_seconds > 0:
        figures["watch_seconds"] = watch_seconds
        figures["watch_requests_tarscli"] = watch_requests(
            kubectl, [str(TARSCLI), "self-code", "status", RUN_NAME, "--watch", *tarscli[1:]],
            watch_seconds,
        )  # fmt: skip
        figures["watch_requests_kubectl"] = watch_requests(
            kubectl, [*in_namespace, "get", "scr", RUN_NAME, "--watch"], watch_seconds
        )
    return figures


def report(
    figures: dict[str, object], import_total: float, slowest: list[tuple[float, str]]
) -> None:
    print(f"{figures['runs']} runs of each command, alternating; {figures['cores']} cores")
    print("median wall seconds, median CPU seconds, peak RSS; the ratios are tarscli/kubectl")
    for key, ours, theirs in (
        ("status", f"tarscli self-code status {RUN_NAME}", f"kubectl get scr {RUN_NAME}"),
        ("replica_list", "tarscli replica list", "kubectl get tr"),
        ("help", "tarscli --help", "kubectl --help"),
    ):
        pair = figures[key]
        assert isinstance(pair, dict)
        for tool, command in (("tarscli", ours), ("kubectl", theirs)):
            print(
                f"  {command:34} {pair[f'{tool}_seconds']:.3f} s  "
                f"cpu {pair[f'{tool}_cpu_seconds']:.3f} s  {pair[f'{tool}_max_rss_mib']:5.1f} MiB"
            )
        print(
            f"  {'':34} ratio {pair['ratio']:.2f} (goal <= {RATIO_GOAL}), "
            f"CPU ratio {pair['cpu_ratio']:.2f}"
        )
    if "watch_seconds" in figures:
        for tool in ("tarscli", "kubectl"):
            requests = figures[f"watch_requests_{tool}"]
            assert isinstance(requests, dict)
            following = {verb: count for verb, count in requests.items() if verb != "changes"}
            print(
                f"{tool} following the run for {figures['watch_seconds']} s while its status "
                f"changed {requests['changes']} times: {sum(following.values())} selfcodingruns "
                f"requests {following}"
            )
    print(f"import tarscli.app: {import_total:.1f} ms; slowest imports (cumulative ms):")
    for cumulative, name in slowest:
        print(f"  {cumulative:8.1f}  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs", type=int, default=15, help="timed runs of each command (default 15)"
    )
    parser.add_argument(
        "--watch-seconds", type=int, default=60,
        help="how long each command follows the run (default 60; 0 skips it)",
    )  # fmt: skip
    parser.add_argument(
        "--kubeconfig", type=Path, help="use this cluster (CRDs installed) instead of a fresh one"
    )
    parser.add_argument("--imports", type=int, default=15, help="slowest imports to print")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    arguments = parser.parse_args(argv)
    if arguments.runs < 1 or arguments.watch_seconds < 0:
        parser.error("--runs must be at least 1 and --watch-seconds at least 0")
    try:
        tools = controlplane.tools_dir_from_env()
    except controlplane.DevClusterError as error:
        raise SystemExit(f"error: {error}") from None
    kubectl_binary = tools / "kubectl"
    with tempfile.TemporaryDirectory(prefix="tars-bench-cli-") as state:
        if arguments.kubeconfig is not None:
            kubeconfig = arguments.kubeconfig
        else:
            kubeconfig = controlplane.up(Path(state), tools).kubeconfig
            crds = ["-f", str(REPOSITORY / "crds")]
            kubectl = [str(kubectl_binary), f"--kubeconfig={kubeconfig}"]
            for step in (["apply", "--server-side"], ["wait", "--for=condition=Established"]):
                subprocess.run([*kubectl, *step, *crds], check=True, capture_output=True)
        try:
            figures = bench(kubeconfig, kubectl_binary, arguments.runs, arguments.watch_seconds)
        finally:
            if arguments.kubeconfig is None:
                controlplane.down(Path(state))
            else:
                subprocess.run(
                    [str(kubectl_binary), f"--kubeconfig={kubeconfig}", "delete", "namespace",
                     NAMESPACE, "--wait=false"],
                    check=False, capture_output=True,
                )  # fmt: skip
    import_total, slowest = import_times(arguments.imports)
    if arguments.json:
        print(json.dumps({**figures, "import_ms": round(import_total, 1)}))
        return 0
    report(figures, import_total, slowest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
