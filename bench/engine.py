"""Benchmark: a full `static` run of the workflow against the raw tools doing the same work.

    .venv/bin/python bench/engine.py DIR [-t TARGET ...]
    .venv/bin/python bench/engine.py --pypi attrs|python-dateutil|boltons [-t TARGET ...]

With --pypi the project is a pinned release from PyPI with its own tests: its sdist,
checked against its sha256, and a virtualenv with its tests' requirements are made once
in ~/.cache/tars-selfcoding/projects (`tests.harness.pypi_projects`, as the tests do);
both sides run its tests with that virtualenv, and it is pointed at its package.

Works on copies of the project (never on the directory itself). On one, the workflow runs with
auto-apply and the in-process roles (a fresh learning store, so earlier runs do not
help it). On the other, the raw tools do the same work: `ruff check --fix` with the
project's configuration and the engine's additions to it, then one full run of the
project's tests. Both are measured in this process, alternately for --repeat rounds
(fresh copies each round, so load on the machine hits both alike), and the medians
printed are:

- the wall time of each, and their ratio (goal: 1.2 or less);
- the test runs the workflow needed per accepted change (goal: 0.3 or less);
- where the workflow's time goes: the wall time of each of its stages, from its events
  (up to an event, the run is in the stage of the event before it).

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
from collections import defaultdict
from pathlib import Path

from tars_api.run import RunPhase, RunStage
from tars_engine.core.events import WorkflowEvent
from tars_engine.core.learning import LearningStore
from tars_engine.core.ruff_config import lint_context, rule_choice
from tars_engine.core.selection import is_git_repository
from tars_engine.core.state import RunOptions
from tars_engine.roles import ruff_tool
from tars_engine.roles.tester import detect_test_command
from tars_engine.transports.embedded import local_workflow

from tests.harness.pypi_projects import (
    ATTRS,
    BOLTONS,
    DATEUTIL,
    ProjectDigestError,
    ProjectUnavailableError,
    PypiProject,
    extract_sdist,
    fetch_sdist,
    tests_virtualenv,
)

PYPI_PROJECTS = {project.name: project for project in (ATTRS, DATEUTIL, BOLTONS)}
# The words for the stages; the rest (starting, learning) is "other".
STAGE_NAMES = {
    RunStage.scanning: "selection",
    RunStage.analyzing: "analysis",
    RunStage.generating: "generation",
    RunStage.testing: "testing",
    RunStage.applying: "applying",
}
OTHER_STAGES = "other"
RATIO_GOAL = 1.2
RUNS_PER_ACCEPTED_GOAL = 0.3
IGNORED_WHEN_COPYING = shutil.ignore_patterns(
    ".git", ".tars", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"
)


def fresh_copy(source: Path, destination: Path, *, every_file: bool = False) -> Path:
    """A copy of the project as a new git repository with one commit (auto-apply needs git).

    `every_file`: the files its .gitignore names too, as an sdist's are: all of them are the
    release's (a version module written when it was built, say)."""
    shutil.copytree(source, destination, ignore=IGNORED_WHEN_COPYING, symlinks=True)
    for arguments in (
        ["init", "-q"],
        ["add", "-A", *(["--force"] if every_file else [])],
        ["-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "commit.gpgsign=false",
         "commit", "-qm", "benchmark copy"],
    ):  # fmt: skip
        subprocess.run(["git", "-C", str(destination), *arguments], check=True, capture_output=True)
    assert is_git_repository(destination)
    return destination


class StageClock:
    """Wall time per stage of a run, told by its events: up to an event, the run was in
    the stage of the event before it."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self._stage = RunStage.initializing
        self._since = time.perf_counter()

    def start(self) -> None:
        self._since = time.perf_counter()

    def _until_now(self) -> float:
        now = time.perf_counter()
        self.seconds[STAGE_NAMES.get(self._stage, OTHER_STAGES)] += now - self._since
        self._since = now
        return now

    def __call__(self, event: WorkflowEvent) -> None:
        self._until_now()
        self._stage = event.stage

    def stop(self) -> None:
        self._until_now()


def timed_workflow(
    root: Path, targets: list[str], learning_db: Path, test_command: list[str] | None
) -> tuple[float, int, int, str, dict[str, float]]:
    """(seconds, test runs, accepted changes, how it ended, seconds per stage) of one static
    run with auto-apply; how it ended is its phase, and what it said unless it succeeded."""
    clock = StageClock()
    workflow = local_workflow(
        root,
        RunOptions(targets=targets, auto_apply=True, test_command=test_command),
        learning=LearningStore(learning_db),
        on_event=clock,
    )
    started = time.perf_counter()
    clock.start()
    state = workflow.run()
    elapsed = time.perf_counter() - started
    clock.stop()
    statistics = state.statistics
    return (
        elapsed,
        statistics.test_runs,
        statistics.improvements_accepted,
        state.phase.value
        if state.phase is RunPhase.succeeded
        else f"{state.phase.value}: {state.message}",
        clock.seconds,
    )


def timed_raw_tools(
    root: Path, targets: list[str], test_command: list[str] | None
) -> tuple[float, float, bool]:
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
    command = test_command or detect_test_command(root)
    if command is None:
        raise SystemExit(f"{root}: no test command detected (the benchmark needs pytest tests)")
    started = time.perf_counter()
    tests = subprocess.run(command, cwd=root, capture_output=True, check=False)
    return ruff_seconds, time.perf_counter() - started, tests.returncode == 0


def pypi_project(name: str, scratch: Path) -> tuple[Path, PypiProject, list[str]]:
    """The release unpacked under `scratch`, and its test command with its tests' virtualenv."""
    project = PYPI_PROJECTS[name]
    try:
        archive = fetch_sdist(project)
        python = tests_virtualenv(project)
    except (ProjectUnavailableError, ProjectDigestError) as exc:
        raise SystemExit(f"{name}: {exc}") from None
    source = extract_sdist(archive, project, scratch / project.sdist_stem)
    return source, project, project.test_command(python)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "project", type=Path, nargs="?",
        help="the project directory (it is copied, never changed)",
    )  # fmt: skip
    parser.add_argument(
        "--pypi", choices=sorted(PYPI_PROJECTS),
        help="instead of a directory, this pinned release from PyPI, with its own tests",
    )  # fmt: skip
    parser.add_argument(
        "-t", "--target", action="append", dest="targets",
        help="project-relative directory to improve (repeatable; default: the whole project, "
        "or a release's package)",
    )  # fmt: skip
    parser.add_argument(
        "-r", "--repeat", type=int, default=3,
        help="measure this many times, alternating the two, and report medians (default 3)",
    )  # fmt: skip
    arguments = parser.parse_args()
    if (arguments.project is None) == (arguments.pypi is None):
        raise SystemExit("give a project directory or --pypi NAME, not both")
    if arguments.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    with tempfile.TemporaryDirectory(prefix="tars-bench-source-") as source_scratch:
        if arguments.pypi is not None:
            source, release, test_command = pypi_project(arguments.pypi, Path(source_scratch))
            default_targets = [release.package]
        else:
            source, test_command, default_targets = arguments.project.resolve(), None, ["."]
            if not source.is_dir():
                raise SystemExit(f"{arguments.project} is not a directory")
        measure(
            source,
            arguments.targets or default_targets,
            test_command,
            arguments.repeat,
            sdist=arguments.pypi is not None,
        )


def measure(
    source: Path, targets: list[str], test_command: list[str] | None, repeat: int, *, sdist: bool
) -> None:
    """Run both sides `repeat` times on fresh copies of `source` (`sdist`: an unpacked
    release), and print the medians."""
    engine_times: list[float] = []
    ruff_times: list[float] = []
    test_times: list[float] = []
    ratios: list[float] = []
    stage_times: list[dict[str, float]] = []
    for round_number in range(repeat):
        with tempfile.TemporaryDirectory(prefix="tars-bench-") as scratch:
            workspace = Path(scratch)
            engine_copy = fresh_copy(source, workspace / "engine" / source.name, every_file=sdist)
            raw_copy = fresh_copy(source, workspace / "raw" / source.name, every_file=sdist)
            # Each goes first every other round: neither always finds the caches warm.
            if round_number % 2:
                ruff_seconds, test_seconds, raw_tests_passed = timed_raw_tools(
                    raw_copy, targets, test_command
                )
            engine_seconds, test_runs, accepted, phase, stages = timed_workflow(
                engine_copy, targets, workspace / "learning.sqlite3", test_command
            )
            if not round_number % 2:
                ruff_seconds, test_seconds, raw_tests_passed = timed_raw_tools(
                    raw_copy, targets, test_command
                )
        if phase != RunPhase.succeeded.value or not raw_tests_passed:
            print(
                f"round {round_number + 1}: workflow {phase}, raw tests passed: {raw_tests_passed}"
            )
            sys.exit(1)
        engine_times.append(engine_seconds)
        ruff_times.append(ruff_seconds)
        test_times.append(test_seconds)
        stage_times.append(stages)
        ratios.append(engine_seconds / (ruff_seconds + test_seconds))
        print(
            f"round {round_number + 1}: workflow {engine_seconds:.3f} s, raw tools "
            f"{ruff_seconds + test_seconds:.3f} s, ratio {ratios[-1]:.2f}"
        )
    per_accepted = f"{test_runs / accepted:8.2f}" if accepted else "     n/a"
    print(f"project:                      {source} (targets: {', '.join(targets)})")
    print(f"medians over {repeat} alternating rounds:")
    print(f"static run (workflow):        {statistics.median(engine_times):8.3f} s")
    for stage in [*STAGE_NAMES.values(), OTHER_STAGES]:
        seconds = statistics.median(stages.get(stage, 0.0) for stages in stage_times)
        print(f"  {stage + ':':27} {seconds:8.3f} s")
    print(f"raw tools: ruff check --fix:  {statistics.median(ruff_times):8.3f} s")
    print(f"raw tools: one test run:      {statistics.median(test_times):8.3f} s")
    print(
        f"ratio workflow / raw tools:   {statistics.median(ratios):8.2f}   (goal <= {RATIO_GOAL})"
    )
    print(f"accepted changes:             {accepted:8d}")
    print(f"test runs:                    {test_runs:8d}")
    print(f"test runs per accepted:       {per_accepted}   (goal <= {RUNS_PER_ACCEPTED_GOAL})")


if __name__ == "__main__":
    main()
