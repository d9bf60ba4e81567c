"""Benchmark: a full `static` run of the workflow against the raw tools doing the same work.

    .venv/bin/python bench/engine.py DIR [-t TARGET ...]

Works on copies of DIR (never on DIR itself). On one, the workflow runs with
auto-apply and the in-process roles (a fresh learning store, so earlier runs do not
help it). On the other, the raw tools do the same work: `ruff check --fix` with the
project's configuration and the engine's additions to it, then one full run of the
project's tests. Both are measured in this process, alternately for --repeat rounds
(fresh copies each round, so load on the machine hits both alike), and the medians
printed are:

- the wall time of each, and their ratio (goal: 1.5 or less);
- the test runs the workflow needed per accepted change (goal: 0.3 or less).

The workflow's time is measured from the call into the engine (the interpreter and
its imports are already loaded; the raw tools pay their own process start-up, as
they do when a person runs them).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tars_engine.core.learning import LearningStore
from tars_engine.core.ruff_config import lint_context, rule_choice
from tars_engine.core.selection import is_git_repository
from tars_engine.core.state import RunOptions
from tars_engine.roles import ruff_tool
from tars_engine.roles.tester import detect_test_command
from tars_engine.transports.embedded import local_workflow

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
    # Ruff finds the project's configuration itself; the engine's additions are those it
    # makes for a module at the top of the first target.
    module = f"{targets[0]}/__init__.py"
    ruff = [
        ruff_tool.ruff_binary(), "check", "--fix", "--force-exclude", "--quiet",
        *ruff_tool.project_arguments(rule_choice(lint_context(root, module), module)),
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
    parser.add_argument(
        "-r", "--repeat", type=int, default=3,
        help="measure this many times, alternating the two, and report medians (default 3)",
    )  # fmt: skip
    arguments = parser.parse_args()
    source = arguments.project.resolve()
    if not source.is_dir():
        raise SystemExit(f"{arguments.project} is not a directory")
    if arguments.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    targets = arguments.targets or ["."]
    engine_times: list[float] = []
    ruff_times: list[float] = []
    test_times: list[float] = []
    ratios: list[float] = []
    for round_number in range(arguments.repeat):
        with tempfile.TemporaryDirectory(prefix="tars-bench-") as scratch:
            workspace = Path(scratch)
            engine_copy = fresh_copy(source, workspace / "engine" / source.name)
            raw_copy = fresh_copy(source, workspace / "raw" / source.name)
            engine_seconds, test_runs, accepted, phase = timed_workflow(
                engine_copy, targets, workspace / "learning.sqlite3"
            )
            ruff_seconds, test_seconds, raw_tests_passed = timed_raw_tools(raw_copy, targets)
        if phase != "Succeeded" or not raw_tests_passed:
            print(
                f"round {round_number + 1}: workflow {phase}, raw tests passed: {raw_tests_passed}"
            )
            sys.exit(1)
        engine_times.append(engine_seconds)
        ruff_times.append(ruff_seconds)
        test_times.append(test_seconds)
        ratios.append(engine_seconds / (ruff_seconds + test_seconds))
        print(
            f"round {round_number + 1}: workflow {engine_seconds:.3f} s, raw tools "
            f"{ruff_seconds + test_seconds:.3f} s, ratio {ratios[-1]:.2f}"
        )
    per_accepted = test_runs / accepted if accepted else float("inf")
    print(f"project:                      {source} (targets: {', '.join(targets)})")
    print(f"medians over {arguments.repeat} alternating rounds:")
    print(f"static run (workflow):        {statistics.median(engine_times):8.3f} s")
    print(f"raw tools: ruff check --fix:  {statistics.median(ruff_times):8.3f} s")
    print(f"raw tools: one test run:      {statistics.median(test_times):8.3f} s")
    print(
        f"ratio workflow / raw tools:   {statistics.median(ratios):8.2f}   (goal <= {RATIO_GOAL})"
    )
    print(f"accepted changes:             {accepted:8d}")
    print(f"test runs:                    {test_runs:8d}")
    print(f"test runs per accepted:       {per_accepted:8.2f}   (goal <= {RUNS_PER_ACCEPTED_GOAL})")


if __name__ == "__main__":
    main()
