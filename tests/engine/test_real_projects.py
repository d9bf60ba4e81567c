"""A real project from PyPI, as a new user tries TARS on it: boltons 26.2.0 and its own tests.

`tarscli self-code run --auto-apply` runs as a real process on fresh copies of the
sdist, once with safe fixes only and once with `--unsafe-fixes`, and `ruff check --fix`
runs alone with the same rule selection on a third copy.

A run that allows more accepts at least what the narrower run accepts, by construction:
the static engine settles every file's safe fixes (the narrower run's whole work, the
same candidates in the same batches) before it tries any unsafe fix on top of them. So
the safe run's accepted candidates are a subset of the unsafe run's, by id (a digest
of the file and its diff), not only by count.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from tars_api.run import FileOutcome
from tars_engine.core.ruff_config import lint_context, rule_choice
from tars_engine.core.state import StateStore, WorkflowState
from tars_engine.core.validation import is_test_file, only_whitespace_changed
from tars_engine.roles.ruff_tool import project_arguments, ruff_binary

from tests.harness.cli import cli_env, tarscli
from tests.harness.pypi_projects import BOLTONS, PypiProject, unpacked
from tests.harness.tools import git, run_tool
from tests.harness.workflow import project_tests_pass

# The goal the issue sets for the static engine: tests are batched, so most accepted
# changes share their test run with many others.
MAX_TEST_RUNS_PER_ACCEPTED_CHANGE = 0.3


def self_code(root: Path, project: PypiProject, *options: str) -> tuple[WorkflowState, str]:
    """The run's final state, and what it printed."""
    completed = tarscli(
        root,
        cli_env(root.parent / f"{root.name}-run"),
        "self-code", "run", "-t", project.package, "--auto-apply", *options,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    state = StateStore(root / ".tars").load()
    assert state is not None
    return state, completed.stdout


def ruff_arguments(root: Path, project: PypiProject) -> list[str]:
    """The rule selection the engine runs ruff with in this project."""
    path = f"{project.package}/__init__.py"
    return [*project_arguments(rule_choice(lint_context(root, path), path)), project.package]


def findings(root: Path, arguments: list[str]) -> Counter[str]:
    """Ruff's findings per file."""
    completed = run_tool(
        [ruff_binary(), "check", "--no-cache", "--output-format", "json", *arguments],
        cwd=root,
        check=False,
    )
    assert completed.returncode in (0, 1), completed.stderr
    return Counter(
        Path(item["filename"]).relative_to(root).as_posix() for item in json.loads(completed.stdout)
    )


def fixed_by_ruff_alone(root: Path, arguments: list[str]) -> int:
    """Findings `ruff check --fix` removes alone, in the files TARS may change (never a test
    file) where its change is more than whitespace (TARS never changes layout alone)."""
    before_findings = findings(root, arguments)
    paths = git(root, "ls-files", "*.py").split()
    before = {path: (root / path).read_text() for path in paths}
    run_tool([ruff_binary(), "check", "--no-cache", "--fix", *arguments], cwd=root, check=False)
    after_findings = findings(root, arguments)
    return sum(
        before_findings[path] - after_findings[path]
        for path in paths
        if not is_test_file(path)
        and not only_whitespace_changed(before[path], (root / path).read_text())
    )


def accepted_rules(state: WorkflowState) -> set[tuple[str, str]]:
    return {(candidate.path, rule) for candidate in state.accepted for rule in candidate.rules}


def test_unsafe_fixes_accept_at_least_what_safe_ones_do_and_more_than_ruff_alone(
    tmp_path: Path,
) -> None:
    project = BOLTONS
    safe_root = unpacked(project, tmp_path / "safe")
    unsafe_root = unpacked(project, tmp_path / "unsafe")
    ruff_root = unpacked(project, tmp_path / "ruff")
    arguments = ruff_arguments(safe_root, project)
    before = sum(findings(safe_root, arguments).values())

    safe, safe_report = self_code(safe_root, project)
    unsafe, unsafe_report = self_code(unsafe_root, project, "--unsafe-fixes")
    by_ruff = fixed_by_ruff_alone(ruff_root, arguments)

    safe_ids = {candidate.id for candidate in safe.accepted}
    unsafe_ids = {candidate.id for candidate in unsafe.accepted}
    assert safe_ids <= unsafe_ids, sorted(safe_ids - unsafe_ids)
    assert accepted_rules(safe) <= accepted_rules(unsafe)
    assert len(unsafe.accepted) > len(safe.accepted)
    fixed_safe = before - sum(findings(safe_root, arguments).values())
    fixed_unsafe = before - sum(findings(unsafe_root, arguments).values())
    assert fixed_unsafe > fixed_safe >= by_ruff > 0, (fixed_unsafe, fixed_safe, by_ruff)
    # A rule whose fix introduces what the run cannot fix is left out, never the file.
    for state in (safe, unsafe):
        assert not any("would introduce" in record.message for record in state.files)
    left_out = {(r.path, d.rule) for r in safe.files for d in r.dropped_rules}
    assert ("boltons/iterutils.py", "SIM114") in left_out
    # The report names every rule left out, why, and the test runs per accepted change.
    for state, report in ((safe, safe_report), (unsafe, unsafe_report)):
        assert "per accepted change" in state.message and "RUNS/ACCEPTED" in report
        for record in state.files:
            for drop in record.dropped_rules:
                row = rf"{re.escape(record.path)}\s+{drop.rule}\s+{drop.cause.value}\s+\S"
                assert re.search(row, report), drop
    assert safe.file("boltons/iterutils.py").outcome is FileOutcome.applied
    for root, state in ((safe_root, safe), (unsafe_root, unsafe)):
        base = git(root, "rev-list", "--max-parents=0", "HEAD").strip()
        changed = git(root, "diff", "--name-only", base, "HEAD").split()
        assert changed and all(
            path.startswith(f"{project.package}/") and not is_test_file(path) for path in changed
        )
        assert git(root, "status", "--porcelain") == ""
        assert project_tests_pass(root), root
        statistics = state.statistics
        assert statistics.improvements_applied == len(state.accepted)
        assert (
            statistics.test_runs / statistics.improvements_accepted
            <= MAX_TEST_RUNS_PER_ACCEPTED_CHANGE
        ), (root.name, statistics)
    print(
        f"\n{project.name} {project.version}: findings {before}; fixed by ruff --fix alone "
        f"{by_ruff}, by TARS {fixed_safe} (safe) and {fixed_unsafe} (unsafe); accepted "
        f"{len(safe.accepted)} and {len(unsafe.accepted)} changes in "
        f"{safe.statistics.test_runs} and {unsafe.statistics.test_runs} test runs"
    )
