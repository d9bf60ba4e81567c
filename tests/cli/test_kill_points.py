"""Nothing of the user's is lost: a real `tarscli self-code run` killed at every step boundary.

Each trial runs the CLI on a fresh copy of the sample project with ReplicaEnv.kill_at
naming one step boundary and one signal, so that the run sends itself SIGKILL, SIGTERM
or SIGINT when it gets there; then the user edits a file by hand and runs the same
command again. After the second run: the edit is there and in no commit, no improvement
is committed twice, no file differs from its last commit but the edited one, and the
committed tree is the base plus the diffs of exactly the improvements committed. Without
auto-apply: no commit at all, the tree as it was but the edit, and the patch holding each
accepted diff once (tried with SIGKILL only). Boundaries are counted by the run itself, so
the trials go on until a run ends before its Nth boundary; the test prints how many kill
points it tried.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import shutil
import signal
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from tars_api.names import ReplicaEnv
from tars_api.run import FileOutcome, RunPhase
from tars_engine.core.applying import CANDIDATE_TRAILER
from tars_engine.core.models import Candidate
from tars_engine.core.state import StateStore, WorkflowState

from tests.harness.cli import tarscli
from tests.harness.projects import tree_hashes
from tests.harness.tools import git
from tests.harness.workflow import sample_project

KILL_SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)
# Each trial is two real runs, mostly waiting on a process; two at a time use both cores.
TRIALS_AT_ONCE = 2
HAND_EDIT = b"# edited by hand while the run was stopped\n"
EXIT_STOPPED = 130


@dataclass(frozen=True)
class Sweep:
    """What every trial of one test shares."""

    template: Path
    base: str
    auto_apply: bool
    max_files: int
    edited: str
    known: dict[str, Candidate]
    workspace: Path
    signals: tuple[signal.Signals, ...]


@dataclass(frozen=True)
class Trial:
    """One kill point tried: the project after its rerun, and what the user wrote."""

    sweep: Sweep
    signum: signal.Signals
    boundary: int
    root: Path
    edited_bytes: bytes
    head_before_rerun: str

    def __str__(self) -> str:
        return f"{self.signum.name} at boundary {self.boundary}"


def run_cli(
    root: Path, env: dict[str, str], auto_apply: bool, max_files: int
) -> subprocess.CompletedProcess[str]:
    arguments = ["self-code", "run", "-t", "ledgerly", "--max-files", str(max_files)]
    return tarscli(root, env, *arguments, *(["--auto-apply"] if auto_apply else []))


def trial_env(directory: Path) -> dict[str, str]:
    variables = {
        key: value
        for key, value in os.environ.items()
        if key not in ("OLLAMA_HOST", ReplicaEnv.kill_at)
    }
    variables.update(
        TARS_SCRATCH_DIR=str(directory / "scratch"),
        # A fresh learning store per trial: what an earlier trial learnt must not
        # change which files this one works on.
        TARS_LEARNING_DB=str(directory / "learning.sqlite3"),
        COLUMNS="200",
    )
    return variables


def final_state(root: Path) -> WorkflowState:
    state = StateStore(root / ".tars").load()
    assert state is not None
    return state


def committed_tree(root: Path, into: Path) -> dict[str, str]:
    """sha256 of every file HEAD holds, by path."""
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", "--format=tar", "HEAD"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return tree_hashes(into)


def tars_commits(root: Path, base: str) -> list[tuple[str, list[str], list[str]]]:
    """(commit, candidate ids in its trailers, paths it changed) of every commit after base, oldest first."""
    log = git(root, "log", "--reverse", "--format=%H", f"{base}..HEAD").split()
    found = []
    for commit in log:
        ids = git(
            root, "log", "-1", f"--format=%(trailers:key={CANDIDATE_TRAILER},valueonly)", commit
        ).split()
        paths = git(root, "diff-tree", "--no-commit-id", "--name-only", "-r", commit).split()
        found.append((commit, ids, paths))
    return found


def check_auto_apply(trial: Trial, scratch: Path) -> None:
    root, edited, known, where = trial.root, trial.sweep.edited, trial.sweep.known, str(trial)
    # The user's edit is neither lost nor committed.
    assert (root / edited).read_bytes() == trial.edited_bytes, where
    assert not git(root, "log", "--format=%H", f"{trial.head_before_rerun}..HEAD", "--", edited), (
        where
    )
    # No file changed without its commit: the edit is the one difference from HEAD.
    assert git(root, "status", "--porcelain", "--untracked-files=no").split() == [
        "M",
        edited,
    ], where
    # Each commit is one improvement of one file, none twice, each one the run knows.
    commits = tars_commits(root, trial.sweep.base)
    ids = [candidate_id for _, found, _ in commits for candidate_id in found]
    assert all(len(found) == 1 for _, found, _ in commits), (where, commits)
    assert len(ids) == len(set(ids)), (where, ids)
    assert set(ids) <= set(known), (where, ids)
    assert all(paths == [known[found[0]].path] for _, found, paths in commits), (where, commits)
    # The committed tree is the base plus exactly those diffs, applied by git itself.
    expected = scratch / "expected"
    shutil.copytree(trial.sweep.template, expected, ignore=shutil.ignore_patterns(".git", ".tars"))
    for candidate_id in ids:
        subprocess.run(
            ["git", "apply", "-"],
            cwd=expected,
            input=known[candidate_id].diff.encode(),
            check=True,
        )
    assert committed_tree(root, scratch / "head") == tree_hashes(expected), where
    # The run finished, and every file it chose but the edited one got its improvement.
    state = final_state(root)
    assert state.phase is RunPhase.succeeded, (where, state.message)
    assert {change.candidate_id for change in state.applied} <= set(ids), where
    for record in state.files:
        if record.path != edited:
            assert record.outcome is FileOutcome.applied, (where, record)


def check_patch(trial: Trial) -> None:
    root, edited, where = trial.root, trial.sweep.edited, str(trial)
    assert git(root, "rev-parse", "HEAD").strip() == trial.sweep.base, where
    assert (root / edited).read_bytes() == trial.edited_bytes, where
    expected = tree_hashes(trial.sweep.template)
    expected[edited] = tree_hashes(root)[edited]
    assert tree_hashes(root) == expected, where
    state = final_state(root)
    assert state.phase is RunPhase.succeeded, (where, state.message)
    ids = [candidate.id for candidate in state.accepted]
    assert len(ids) == len(set(ids)), (where, ids)
    assert state.patch_path is not None, where
    patch = Path(state.patch_path).read_text(encoding="utf-8")
    assert patch == "".join(candidate.diff for candidate in state.accepted), where
    assert all(record.outcome is FileOutcome.accepted for record in state.files), (
        where,
        state.files,
    )


def run_trial(sweep: Sweep, signum: signal.Signals, boundary: int) -> bool:
    """Kill a run at BOUNDARY, edit by hand, run again, check; False when the run ended first."""
    directory = sweep.workspace / f"{signum.name}-{boundary}"
    root = directory / "ledgerly"
    shutil.copytree(sweep.template, root, symlinks=True)
    env = trial_env(directory)
    kill_at = {str(ReplicaEnv.kill_at): f"{boundary}:{signum.name}"}
    killed = run_cli(root, env | kill_at, sweep.auto_apply, sweep.max_files)
    marker = f"{ReplicaEnv.kill_at}: {signum.name} at step boundary {boundary} "
    if marker not in killed.stderr:
        assert killed.returncode == 0, killed.stdout + killed.stderr
        shutil.rmtree(directory)
        return False
    if signum is signal.SIGKILL:
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    else:
        # Asked to stop: the step in hand ends and the state is saved; exit 130 and no
        # traceback (or 0, when all that was left was to finish).
        assert killed.returncode in (EXIT_STOPPED, 0), killed.stdout + killed.stderr
        lines = killed.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(marker), killed.stderr
        if killed.returncode == EXIT_STOPPED:
            assert "Stopped: stop requested" in killed.stdout, killed.stdout
    edited_bytes = (root / sweep.edited).read_bytes() + HAND_EDIT
    (root / sweep.edited).write_bytes(edited_bytes)
    trial = Trial(
        sweep=sweep,
        signum=signum,
        boundary=boundary,
        root=root,
        edited_bytes=edited_bytes,
        head_before_rerun=git(root, "rev-parse", "HEAD").strip(),
    )
    rerun = run_cli(root, env, sweep.auto_apply, sweep.max_files)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    if sweep.auto_apply:
        check_auto_apply(trial, directory)
    else:
        check_patch(trial)
    shutil.rmtree(directory)
    return True


def kill_everywhere(sweep: Sweep) -> dict[str, int]:
    """Every boundary with every signal, two trials at a time; kill points tried per signal."""
    tried: dict[str, int] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=TRIALS_AT_ONCE) as pool:
        for signum in sweep.signals:
            tried[signum.name] = 0
            first = 1
            while True:
                boundaries = range(first, first + TRIALS_AT_ONCE)
                trials = [pool.submit(run_trial, sweep, signum, b) for b in boundaries]
                killed = [trial.result() for trial in trials]
                tried[signum.name] += sum(killed)
                if not all(killed):
                    break
                first += TRIALS_AT_ONCE
            assert tried[signum.name] > 0, f"no step boundary reached with {signum.name}"
    return tried


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorkflowState]:
    """The sample project, and an uninterrupted auto-apply run of it over every file: each
    candidate a trial can make (the static engine makes the same ones each time) and the
    files in the order runs choose them."""
    workspace = tmp_path_factory.mktemp("reference")
    template = sample_project(workspace / "template")
    root = workspace / "run" / "ledgerly"
    shutil.copytree(template, root, symlinks=True)
    completed = tarscli(
        root, trial_env(workspace / "run"), "self-code", "run", "-t", "ledgerly", "--auto-apply"
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return template, final_state(root)


@pytest.mark.parametrize(
    ("auto_apply", "max_files", "signals"),
    [
        # Two files: the second improvement is applied after the first one's commit.
        (True, 2, KILL_SIGNALS),
        # The kill alone, for time: a stop that SIGTERM or SIGINT asks for lands at the
        # same checks in both modes, and the auto-apply sweep tries those everywhere.
        (False, 1, (signal.SIGKILL,)),
    ],
    ids=["auto-apply", "patch"],
)
def test_a_run_killed_at_any_step_boundary_loses_nothing(
    tmp_path: Path,
    reference: tuple[Path, WorkflowState],
    auto_apply: bool,
    max_files: int,
    signals: tuple[signal.Signals, ...],
) -> None:
    template, reference_state = reference
    chosen = [record.path for record in reference_state.files]
    sweep = Sweep(
        template=template,
        base=git(template, "rev-parse", "HEAD").strip(),
        auto_apply=auto_apply,
        max_files=max_files,
        # The last file the trials choose: still to be improved at most kill points.
        edited=chosen[max_files - 1],
        known={candidate.id: candidate for candidate in reference_state.accepted},
        workspace=tmp_path,
        signals=signals,
    )
    tried = kill_everywhere(sweep)
    mode = "auto-apply" if auto_apply else "patch"
    print(f"\nkill points tried ({mode}, {max_files} files): {sum(tried.values())} {tried}")
