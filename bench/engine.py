"""Benchmark: a full `static` run of the workflow against the raw tools doing the same work.

    .venv/bin/python bench/engine.py DIR [-t TARGET ...]

Works on two copies of DIR (never on DIR itself). On one, the workflow runs with
auto-apply and the in-process roles (a fresh learning store, so earlier runs do not
help it). On the other, the raw tools do the same work: `ruff check --fix` with the
engine's rule set, then one full run of the project's tests. Both are measured in
this process, one after the other, and the figures printed are:

- the wall time of each, and their ratio (goal: 1.5 or less);
- the test runs the workflow needed per accepted change (goal: 0.3 or less).

The workflow's time is measured from the call into the engine (the interpreter and
its imports are already loaded; the raw tools pay their own process start-up, as
they do when a person runs them).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tars_engine import ruff_tool
from tars_engine.embedded import local_workflow
from tars_engine.learning import LearningStore
from tars_engine.selection import is_git_repository
from tars_engine.state import RunOptions
from tars_engine.tester import detect_test_command

RATIO_GOAL = 1.5
RUNS_PER_ACCEPTED_GOAL = 0.3
IGNORED_WHEN_COPYING = shutil.ignore_patterns(
    ".git", ".tars", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"
)


def fresh_copy(source: Path, destination: Path) -> Path:
    """A copy of the project as a new git repository with one commit (auto-apply needs git)."""
    shutil.copytree(source, destination, ignore=IGNORED_WHEN_COPYING, symlinks=True)
    for arguments in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "commit.gpgsign=false",
         "commit", "-qm", "benchmark copy"],
    ):  # fmt: skip
        subprocess.run(["git", "-C", str(destination), *arguments], check=True, capture_output=True)
    assert is_git_repository(destination)
    return destination


def timed_workflow(
    root: Path, targets: list[str], learning_db: Path
) -> tuple[float, int, int, str]:
    """(seconds, test runs, accepted changes, phase) of one static run with auto-apply."""
    workflow = local_workflow(
        root,
        RunOptions(targets=targets, auto_apply=True),
        learning=LearningStore(learning_db),
    )
    started = time.perf_counter()
    state = workflow.run()
    elapsed = time.perf_counter() - started
    statistics = state.statistics
    return elapsed, statistics.test_runs, statistics.improvements_accepted, state.phase.value


def timed_raw_tools(root: Path, targets: list[str]) -> tuple[float, float, bool]:
    """(ruff seconds, test seconds, tests passed) for `ruff check --fix` plus one test run."""
    ruff = [
        ruff_tool.ruff_binary(), "check", "--fix", "--isolated", "--quiet",
        "--target-version", ruff_tool.TARGET_VERSION,
        "--select", ",".join(ruff_tool.SELECTED_RULES),
        "--ignore", ",".join(ruff_tool.IGNORED_RULES),
        *targets,
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(ruff, cwd=root, capture_output=True, check=False)
    ruff_seconds = time.perf_counter() - started
    command = detect_test_command(root)
    if command is None:
        raise SystemExit(f"{root}: no test command detected (the benchmark needs pytest tests)")
    started = time.perf_counter()
    tests = subprocess.run(command, cwd=root, capture_output=True, check=False)
    return ruff_seconds, time.perf_counter() - started, tests.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "project", type=Path, help="the project directory (it is copied, never changed)"
    )
    parser.add_argument(
        "-t", "--target", action="append", dest="targets",
        help="project-relative directory to improve (repeatable; default: the whole project)",
    )  # fmt: skip
    arguments = parser.parse_args()
    source = arguments.project.resolve()
    if not source.is_dir():
        raise SystemExit(f"{arguments.project} is not a directory")
    targets = arguments.targets or ["."]
    with tempfile.TemporaryDirectory(prefix="tars-bench-") as scratch:
        workspace = Path(scratch)
        engine_copy = fresh_copy(source, workspace / "engine" / source.name)
        raw_copy = fresh_copy(source, workspace / "raw" / source.name)
        engine_seconds, test_runs, accepted, phase = timed_workflow(
            engine_copy, targets, workspace / "learning.sqlite3"
        )
        ruff_seconds, test_seconds, raw_tests_passed = timed_raw_tools(raw_copy, targets)
    raw_seconds = ruff_seconds + test_seconds
    ratio = engine_seconds / raw_seconds
    per_accepted = test_runs / accepted if accepted else float("inf")
    print(f"project:                      {source} (targets: {', '.join(targets)})")
    print(f"static run (workflow):        {engine_seconds:8.3f} s  phase {phase}")
    print(f"raw tools: ruff check --fix:  {ruff_seconds:8.3f} s")
    print(
        f"raw tools: one test run:      {test_seconds:8.3f} s  ({'passed' if raw_tests_passed else 'FAILED'})"
    )
    print(f"raw tools total:              {raw_seconds:8.3f} s")
    print(f"ratio workflow / raw tools:   {ratio:8.2f}   (goal <= {RATIO_GOAL})")
    print(f"accepted changes:             {accepted:8d}")
    print(f"test runs:                    {test_runs:8d}")
    print(f"test runs per accepted:       {per_accepted:8.2f}   (goal <= {RUNS_PER_ACCEPTED_GOAL})")
    if phase != "Succeeded":
        sys.exit(1)


if __name__ == "__main__":
    main()
