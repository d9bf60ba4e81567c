"""Benchmark: the cost of the sandbox on one test run of a project (the sample project by default).

    .venv/bin/python bench/sandbox.py [DIR] [--repeat N]

A tester of its own (scratch directory in a temporary directory) holds one snapshot of
DIR and runs its tests, alternately with `--sandbox off` and `--sandbox required`, for
--repeat rounds in this process, so load on the machine hits both alike. It prints the
median wall time of a test run each way (the tester's whole run_tests: extracting the
snapshot, the command, clean-up) and their ratio. Every run must pass; a failure stops
the benchmark with its output.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tars_api.vocabulary import SandboxMode
from tars_engine.core.models import SnapshotRef, TestRequest
from tars_engine.core.settings import ReplicaSettings
from tars_engine.core.snapshot import pack_project
from tars_engine.roles.tester import Tester

SAMPLE_PROJECT = Path(__file__).resolve().parent.parent / "examples" / "sample-project"
MODES = (SandboxMode.off, SandboxMode.required)


def timed_run(tester: Tester, ref: SnapshotRef, mode: SandboxMode) -> float:
    started = time.perf_counter()
    result = tester.run_tests(TestRequest(snapshot=ref, candidates=[], sandbox=mode))
    elapsed = time.perf_counter() - started
    if not result.passed:
        sys.exit(f"the tests failed with --sandbox {mode.value}:\n{result.output}")
    if mode is SandboxMode.required and (result.sandbox is None or not result.sandbox.isolated):
        sys.exit(f"--sandbox required did not isolate the run: {result.sandbox}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", nargs="?", type=Path, default=SAMPLE_PROJECT)
    parser.add_argument("--repeat", type=int, default=7, help="rounds of one run each way")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tars-bench-sandbox-") as scratch:
        tester = Tester(ReplicaSettings(scratch_dir=Path(scratch)))
        ref = tester.put_snapshot(f"bench-{uuid.uuid4().hex[:8]}", pack_project(arguments.project))
        for mode in MODES:
            timed_run(tester, ref, mode)  # warm-up: the page cache and the bwrap probe
        seconds: dict[SandboxMode, list[float]] = {mode: [] for mode in MODES}
        for _ in range(arguments.repeat):
            for mode in MODES:
                seconds[mode].append(timed_run(tester, ref, mode))
    off, sandboxed = (statistics.median(seconds[mode]) for mode in MODES)
    print(f"project: {arguments.project} ({arguments.repeat} runs each way, medians)")
    print(f"test run without sandbox: {off:.3f}s")
    print(f"test run in bwrap:        {sandboxed:.3f}s")
    print(f"ratio:                    {sandboxed / off:.3f}")


if __name__ == "__main__":
    main()
