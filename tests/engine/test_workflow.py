"""The workflow on real git repositories, with in-process roles and over real HTTP."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tars_api.run import FileOutcome, RunPhase, RunStage
from tars_api.vocabulary import EngineName, Role
from tars_engine.core.applying import committed_candidates
from tars_engine.core.events import EventKind, WorkflowEvent
from tars_engine.core.gating import next_rule_groups, suspects_last
from tars_engine.core.learning import LearningStore
from tars_engine.core.models import Candidate, DropCause, TestResult
from tars_engine.core.role_pool import WorkerRoles
from tars_engine.core.role_set import RoleSet
from tars_engine.core.settings import ReplicaSettings
from tars_engine.core.state import RuleGroup, RunOptions, StateStore
from tars_engine.core.validation import is_test_file
from tars_engine.core.workflow import Workflow
from tars_engine.core.workflow_errors import WorkflowError
from tars_engine.replica import create_app
from tars_engine.transports.http_client import HttpAnalyzer, HttpGenerator, HttpTester
from tars_engine.transports.server import serve_in_thread

from tests.harness.projects import tree_hashes, write_tree
from tests.harness.tools import git
from tests.harness.workflow import (
    isolated_roles,
    learning,
    load_state,
    project_tests_pass,
    run_workflow,
    sample_project,
    shop_project,
)

__all__ = ["isolated_roles", "learning"]


def changed_paths(root: Path, since: str) -> list[str]:
    return git(root, "diff", "--name-only", since, "HEAD").split()


def test_auto_apply_on_the_sample_commits_each_improvement(
    tmp_path: Path, learning: LearningStore
) -> None:
    root = sample_project(tmp_path / "ledgerly")
    start = git(root, "rev-parse", "HEAD").strip()
    events: list[WorkflowEvent] = []

    state = run_workflow(
        root, learning, on_event=events.append, targets=["ledgerly"], auto_apply=True
    )

    assert state.phase is RunPhase.succeeded, state.message
    applied = [record for record in state.files if record.outcome is FileOutcome.applied]
    assert len(applied) >= 5
    # One commit per improvement, each naming its candidate; nothing else committed.
    commits = committed_candidates(root)
    assert sorted(commits) == sorted(change.candidate_id for change in state.applied)
    assert git(root, "rev-list", "--count", f"{start}..HEAD").strip() == str(len(applied))
    changed = changed_paths(root, start)
    assert changed and all(
        path.startswith("ledgerly/") and not is_test_file(path) for path in changed
    )
    # The run's own files never show up in git.
    assert git(root, "status", "--porcelain") == ""
    assert project_tests_pass(root)
    # Batching: one test run for the whole sample, and the baseline whose tests it must run.
    assert state.statistics.test_runs == 2
    assert state.baseline is not None and state.baseline.executed > 0
    assert state.statistics.improvements_applied == len(applied)
    stages = [event.stage.value for event in events if event.kind is EventKind.stage]
    assert stages[:5] == ["Scanning", "Scanning", "Analyzing", "Analyzing", "Generating"]
    assert (
        events[-1].kind is EventKind.finished
        and events[-1].progress == f"{len(state.files)}/{len(state.files)}"
    )
    assert load_state(root).model_dump() == state.model_dump()
    status = state.run_status()
    assert (
        status.phase is RunPhase.succeeded and status.progress == f"{len(applied)}/{len(applied)}"
    )
    assert status.statistics.improvements_applied == len(applied)
    assert len(status.latest_results) == min(len(applied), 10)
    assert all(result.commit for result in status.latest_results)


def test_a_candidate_that_breaks_the_tests_is_bisected_out(
    tmp_path: Path, learning: LearningStore
) -> None:
    root = shop_project(tmp_path / "shop")
    before = tree_hashes(root)

    state = run_workflow(root, learning, targets=["shop"], auto_apply=False)

    assert state.phase is RunPhase.succeeded, state.message
    outcomes = {record.path: record.outcome for record in state.files}
    assert outcomes == {
        "shop/cart.py": FileOutcome.accepted,
        "shop/compat.py": FileOutcome.rejected,
        "shop/names.py": FileOutcome.accepted,
        "shop/pricing.py": FileOutcome.accepted,
    }
    assert "tests failed" in state.file("shop/compat.py").message
    # Without auto-apply the project keeps every byte; the work is a patch that applies.
    assert tree_hashes(root) == before
    assert state.patch_path is not None
    patch = Path(state.patch_path).read_text()
    assert "shop/compat.py" not in patch and "shop/cart.py" in patch
    git(root, "apply", "--check", state.patch_path)
    git(root, "apply", state.patch_path)
    assert project_tests_pass(root)
    # Bisection: more runs than one batch, fewer than testing each candidate twice.
    assert 3 <= state.statistics.test_runs <= 6
    records = learning.rule_records()
    assert records["F401"].total > records["F401"].accepted
    assert records["UP032"].accepted >= 3


@pytest.mark.parametrize("baseline_first", [False, True])
def test_failing_baseline_stops_the_run_and_touches_nothing(
    tmp_path: Path, learning: LearningStore, baseline_first: bool
) -> None:
    root = shop_project(tmp_path / "shop")
    write_tree(root, {"tests/test_broken.py": "def test_broken():\n    assert 1 == 2\n"})
    git(root, "add", "-A")
    git(root, "-c", "user.name=T", "-c", "user.email=t@e", "commit", "-qm", "broken test")
    before = tree_hashes(root)
    head = git(root, "rev-parse", "HEAD")

    state = run_workflow(
        root, learning, targets=["shop"], auto_apply=True, baseline_first=baseline_first
    )

    assert state.phase is RunPhase.failed
    assert state.baseline is not None and not state.baseline.passed
    assert "tests fail before any change" in state.message and "1 failures" in state.message
    assert state.statistics.improvements_accepted == 0
    assert tree_hashes(root) == before and git(root, "rev-parse", "HEAD") == head


def test_a_hanging_test_command_is_killed_and_nothing_changes(
    tmp_path: Path, learning: LearningStore
) -> None:
    root = shop_project(tmp_path / "shop")
    before = tree_hashes(root)

    state = run_workflow(
        root,
        learning,
        targets=["shop"],
        auto_apply=True,
        test_command=[sys.executable, "-c", "import time; time.sleep(3600)"],
        test_timeout_seconds=2,
    )

    assert state.phase is RunPhase.failed
    assert "timed out" in state.message
    assert tree_hashes(root) == before


@pytest.mark.parametrize("stop_by", ["callable", "stop-file"])
def test_stop_then_resume_finishes_without_reapplying(
    tmp_path: Path, learning: LearningStore, stop_by: str
) -> None:
    root = sample_project(tmp_path / "ledgerly")
    start = git(root, "rev-parse", "HEAD").strip()
    applied_events: list[str] = []

    def note(event: WorkflowEvent) -> None:
        if event.kind is EventKind.file_done and event.message.startswith("committed"):
            applied_events.append(event.path or "")
            if stop_by == "stop-file":
                StateStore(root / ".tars").request_stop()

    first = run_workflow(
        root,
        learning,
        on_event=note,
        stop_requested=(lambda: len(applied_events) >= 1) if stop_by == "callable" else None,
        targets=["ledgerly"],
        auto_apply=True,
        batch_size=3,
    )
    assert first.phase is RunPhase.stopped, first.message
    assert "stop requested" in first.message
    assert 1 <= len(first.applied) < len(first.files)
    pending = [record.path for record in first.files if record.outcome is None]
    assert pending

    second = run_workflow(root, learning, targets=["ledgerly"], auto_apply=True, batch_size=3)

    assert second.phase is RunPhase.succeeded, second.message
    assert second.run_id == first.run_id
    assert all(record.outcome is FileOutcome.applied for record in second.files), [
        (record.path, record.outcome, record.message) for record in second.files
    ]
    ids = [change.candidate_id for change in second.applied]
    assert len(ids) == len(set(ids)) == len(second.files)
    assert int(git(root, "rev-list", "--count", f"{start}..HEAD")) == len(second.files)
    assert project_tests_pass(root)


def test_a_file_edited_while_the_run_is_stopped_is_neither_committed_nor_touched(
    tmp_path: Path, learning: LearningStore
) -> None:
    """Stopped during Testing, a target edited by hand: the resumed run leaves it to the user."""
    root = sample_project(tmp_path / "ledgerly")
    testing = threading.Event()

    def stop_once_testing(event: WorkflowEvent) -> None:
        if event.stage is RunStage.testing:
            testing.set()

    first = run_workflow(
        root,
        learning,
        on_event=stop_once_testing,
        stop_requested=testing.is_set,
        targets=["ledgerly"],
        auto_apply=True,
    )
    assert first.phase is RunPhase.stopped, first.message
    assert not first.applied
    edited = first.files[0].path
    by_hand = (root / edited).read_bytes() + b"# my own note\n"
    (root / edited).write_bytes(by_hand)

    second = run_workflow(root, learning, targets=["ledgerly"], auto_apply=True)

    assert second.phase is RunPhase.succeeded, second.message
    assert (root / edited).read_bytes() == by_hand
    first_commit = git(root, "rev-list", "--max-parents=0", "HEAD").strip()
    assert edited not in changed_paths(root, first_commit)
    record = second.file(edited)
    assert (record.outcome, record.message) == (FileOutcome.skipped, "has uncommitted changes")
    assert len(second.applied) == len(second.files) - 1


def test_resume_after_the_process_died_recovers_commits(tmp_path: Path) -> None:
    """A run killed right after a commit resumes; the commit is recognised, never made twice."""
    root = sample_project(tmp_path / "ledgerly")
    start = git(root, "rev-parse", "HEAD").strip()
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from tars_engine.transports.embedded import local_workflow
        from tars_engine.core.learning import LearningStore
        from tars_engine.core.state import RunOptions

        def die_after_first_commit(event):
            if event.message.startswith("committed"):
                os._exit(9)

        local_workflow(
            Path({str(root)!r}),
            RunOptions(targets=["ledgerly"], auto_apply=True),
            learning=LearningStore(Path({str(tmp_path / "learning.sqlite3")!r})),
            on_event=die_after_first_commit,
        ).run()
        """
    )
    died = subprocess.run(
        [sys.executable, "-c", script], env=os.environ, capture_output=True, check=False
    )
    assert died.returncode == 9, died.stderr.decode()[-2000:]
    assert int(git(root, "rev-list", "--count", f"{start}..HEAD")) == 1
    # Make the crash land between the commit and the state write: the state forgets it.
    store = StateStore(root / ".tars")
    crashed = store.load()
    assert crashed is not None and crashed.phase is RunPhase.running
    applied = crashed.applied.pop()
    record = crashed.file(applied.path)
    record.outcome, record.candidate_id = None, applied.candidate_id
    crashed.accepted = [c for c in crashed.accepted if c.id != applied.candidate_id]
    store.save(crashed)

    resumed = run_workflow(
        root, LearningStore(tmp_path / "learning.sqlite3"), targets=["ledgerly"], auto_apply=True
    )

    assert resumed.phase is RunPhase.succeeded, resumed.message
    assert resumed.file(applied.path).outcome is FileOutcome.applied
    assert "recovered" in resumed.file(applied.path).message
    assert int(git(root, "rev-list", "--count", f"{start}..HEAD")) == len(resumed.files)
    assert len(committed_candidates(root)) == len(resumed.files)
    assert project_tests_pass(root)


def test_learning_changes_the_next_runs_priorities(tmp_path: Path, learning: LearningStore) -> None:
    root = shop_project(tmp_path / "shop")
    first = run_workflow(root, learning, targets=["shop"])
    # Without auto-apply the project is unchanged: the next run sees the same files.
    second = run_workflow(root, learning, targets=["shop"])

    assert second.run_id != first.run_id
    before = {record.path: record.priority for record in first.files}
    after = {record.path: record.priority for record in second.files}
    # compat.py's change failed its tests: it drops; files whose changes passed rise.
    assert after["shop/compat.py"] < before["shop/compat.py"]
    assert after["shop/names.py"] > before["shop/names.py"]
    assert [r.path for r in second.files][-1] == "shop/compat.py"
    examples = learning.examples(["UP032"])
    assert examples and "format" in examples[0].diff


def test_budget_max_files_and_single_file_targets(tmp_path: Path, learning: LearningStore) -> None:
    root = shop_project(tmp_path / "shop")
    state = run_workflow(root, learning, targets=["shop"], budget={"maxFiles": 2})
    assert len(state.files) == 2 and state.phase is RunPhase.succeeded

    single = run_workflow(shop_project(tmp_path / "single"), learning, targets=["shop/names.py"])
    assert [record.path for record in single.files] == ["shop/names.py"]
    assert single.files[0].outcome is FileOutcome.accepted


def test_bad_projects_and_targets_are_refused_before_anything_runs(
    tmp_path: Path, learning: LearningStore
) -> None:
    plain = shop_project(tmp_path / "plain", repository=False)
    before = tree_hashes(plain)
    with pytest.raises(WorkflowError, match="auto-apply refused: .* is not a git repository"):
        run_workflow(plain, learning, targets=["shop"], auto_apply=True)
    with pytest.raises(WorkflowError, match="does not exist"):
        run_workflow(plain, learning, targets=["nowhere"])
    with pytest.raises(WorkflowError, match="outside the project"):
        run_workflow(plain, learning, targets=[str(tmp_path)])
    assert tree_hashes(plain) == before
    # Without auto-apply a plain directory works: the result is a patch.
    state = run_workflow(plain, learning, targets=["shop"])
    assert state.phase is RunPhase.succeeded and state.patch_path
    assert tree_hashes(plain) == before


def test_unusable_files_are_skipped_with_their_reason(
    tmp_path: Path, learning: LearningStore
) -> None:
    root = shop_project(tmp_path / "shop")
    (root / "shop" / "blob.py").write_bytes(b"\x00\x01binary\x00")
    write_tree(
        root,
        {
            "shop/broken.py": "import os\ndef broken(:\n",
            "shop/generated_pb2.py": "# Generated by the protocol buffer compiler.  DO NOT EDIT!\nimport os\n",
            "shop/vendor/lib.py": "import os\n",
            "shop/huge.py": "import os\n" + "x = 1\n" * 60000,
        },
    )
    git(root, "add", "-A")
    git(root, "-c", "user.name=T", "-c", "user.email=t@e", "commit", "-qm", "more files")
    (root / "shop" / "cart.py").write_text(
        (root / "shop" / "cart.py").read_text() + "# local edit\n"
    )
    before = tree_hashes(root)

    state = run_workflow(root, learning, targets=["shop"], auto_apply=True)

    reasons = {skipped.path: skipped.reason.value for skipped in state.skipped}
    assert reasons == {
        "shop/blob.py": "binary",
        "shop/broken.py": "unanalysable",
        "shop/generated_pb2.py": "generated",
        "shop/vendor/lib.py": "vendored",
        "shop/huge.py": "too-large",
        "shop/cart.py": "uncommitted-changes",
    }
    assert "syntax error" in next(s.detail for s in state.skipped if s.path == "shop/broken.py")
    after = tree_hashes(root)
    for path in reasons:
        assert after[path] == before[path], path
    assert state.phase is RunPhase.succeeded


def served(url: str, operation: str) -> float:
    """How many requests for `operation` a replica answered, from its /metrics."""
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("tars_replica_requests_total{") and f'operation="{operation}"' in line
    )


@contextlib.contextmanager
def http_roles(
    settings: ReplicaSettings, count: int, urls_seen: list[dict[Role, str]]
) -> Iterator[WorkerRoles]:
    with contextlib.ExitStack() as stack:
        sets = []
        for _ in range(count):
            urls = {
                role: stack.enter_context(serve_in_thread(create_app(role, settings)))
                for role in (Role.analyzer, Role.generator, Role.tester)
            }
            urls_seen.append(urls)
            sets.append(
                RoleSet(
                    analyzer=HttpAnalyzer(urls[Role.analyzer]),
                    generator=HttpGenerator(urls[Role.generator]),
                    tester=HttpTester(urls[Role.tester]),
                )
            )
        yield WorkerRoles.of(sets)


def test_workflow_over_http_roles(tmp_path: Path, learning: LearningStore) -> None:
    root = shop_project(tmp_path / "shop")
    start = git(root, "rev-parse", "HEAD").strip()
    settings = ReplicaSettings(scratch_dir=tmp_path / "replica-scratch")
    replicas: list[dict[Role, str]] = []
    with http_roles(settings, count=2, urls_seen=replicas) as roles:
        workflow = Workflow(
            root,
            RunOptions(targets=["shop"], auto_apply=True),
            roles,
            store=StateStore(root / ".tars"),
            learning=learning,
        )
        state = workflow.run()
        # Work was spread over every replica of each role.
        for urls in replicas:
            assert served(urls[Role.analyzer], "analyze") >= 1
            assert served(urls[Role.generator], "generate") >= 1
        assert sum(served(urls[Role.tester], "run_tests") for urls in replicas) == (
            state.statistics.test_runs
        )
    assert state.phase is RunPhase.succeeded, state.message
    outcomes = {record.path: record.outcome for record in state.files}
    assert outcomes["shop/compat.py"] is FileOutcome.rejected
    assert sum(outcome is FileOutcome.applied for outcome in outcomes.values()) == 3
    assert int(git(root, "rev-list", "--count", f"{start}..HEAD")) == 3
    assert project_tests_pass(root)


# Three rules with safe fixes, one of them a trap: F401 removes the re-export the tests
# import. Only bisecting the file's rules keeps the other two.
LEGACY_FILES = {
    "shop/legacy.py": textwrap.dedent(
        '''\
        """Names older callers import from here, and greetings."""

        from collections import OrderedDict


        def greet(name):
            return "Hello, {}".format(name)


        def wave():
            return f"wave"
        '''
    ),
    "tests/test_legacy.py": textwrap.dedent(
        """\
        from shop.legacy import OrderedDict, greet, wave


        def test_legacy():
            assert greet("Ann") == "Hello, Ann" and wave() == "wave"
            assert list(OrderedDict(a=1)) == ["a"]
        """
    ),
}


def legacy_project(root: Path) -> Path:
    shop_project(root)
    write_tree(root, LEGACY_FILES)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "legacy names")
    return root


@pytest.mark.parametrize("stopped", [False, True])
def test_a_failing_change_has_its_rules_bisected_and_keeps_those_that_pass(
    tmp_path: Path, learning: LearningStore, stopped: bool
) -> None:
    root = legacy_project(tmp_path / "shop")
    start = git(root, "rev-parse", "HEAD").strip()
    split = threading.Event()

    def note_split(event: WorkflowEvent) -> None:
        if event.path == "shop/legacy.py" and "trying its rules apart" in event.message:
            split.set()

    if stopped:
        # Stopped once the file's change failed and its rules were split: the run
        # resumes the bisection from the state it saved.
        first = run_workflow(
            root,
            learning,
            on_event=note_split,
            stop_requested=split.is_set,
            targets=["shop"],
            auto_apply=True,
        )
        assert first.phase is RunPhase.stopped, first.message
        assert first.file("shop/legacy.py").outcome is None
        assert [group.rules for group in first.file("shop/legacy.py").rule_groups] == [
            ["F401"],
            ["F541", "UP032"],
        ]
    state = run_workflow(root, learning, targets=["shop"], auto_apply=True)

    assert state.phase is RunPhase.succeeded, state.message
    record = state.file("shop/legacy.py")
    assert record.outcome is FileOutcome.applied, record.message
    assert [(drop.rule, drop.cause) for drop in record.dropped_rules] == [
        ("F401", DropCause.tests_failed)
    ]
    assert "left out: F401 (tests-failed)" in record.message
    legacy = (root / "shop" / "legacy.py").read_text()
    assert "from collections import OrderedDict" in legacy
    assert 'f"Hello, {name}"' in legacy and 'return "wave"' in legacy
    assert state.file("shop/compat.py").outcome is FileOutcome.rejected
    # One commit per accepted change; the file's passing half is one of them.
    assert int(git(root, "rev-list", "--count", f"{start}..HEAD")) == len(state.applied)
    legacy_changes = [c for c in state.accepted if c.path == "shop/legacy.py"]
    assert [c.rules for c in legacy_changes] == [["F541", "UP032"]]
    assert project_tests_pass(root)
    assert "per accepted change" in state.message
    records = learning.rule_records()
    assert records["F401"].accepted < records["F401"].total
    assert records["UP032"].accepted >= 1


def test_a_rule_bisection_step_splits_a_failure_and_infers_the_other_half() -> None:
    start = [RuleGroup()]
    split, found = next_rule_groups(start, False, ["B009", "F401", "UP031", "UP032"])
    assert found == [] and [(g.rules, g.fails_after_a_pass) for g in split] == [
        (["B009", "F401"], False),
        (["UP031", "UP032"], True),
    ]
    # The first half passes: the second, known to fail, is split without a test.
    after_pass, found = next_rule_groups(split, True, ["B009", "F401"])
    assert found == [] and [(g.rules, g.fails_after_a_pass) for g in after_pass] == [
        (["UP031"], False),
        (["UP032"], True),
    ]
    # UP031 passes, so UP032 is the culprit, found without a test of its own.
    assert next_rule_groups(after_pass, True, ["UP031"]) == ([], ["UP032"])
    # UP031 fails instead: it is a culprit, and UP032 must be tested.
    rest, found = next_rule_groups(after_pass, False, ["UP031"])
    assert found == ["UP031"] and [(g.rules, g.fails_after_a_pass) for g in rest] == [
        (["UP032"], False)
    ]
    # No change made of a group: nothing is inferred from it.
    rest, found = next_rule_groups(split, None, [])
    assert found == [] and [(g.rules, g.fails_after_a_pass) for g in rest] == [
        (["UP031", "UP032"], False)
    ]


def test_a_failing_batch_is_split_before_the_files_its_output_names() -> None:
    def candidate(path: str) -> Candidate:
        return Candidate(
            id=path, path=path, base_sha256="0", diff="d", rationale="r", engine=EngineName.static
        )

    group = [candidate(f"pkg/{name}.py") for name in ("a", "b", "c", "d")]
    failed = TestResult(
        passed=False,
        command=["pytest"],
        output='File "/tmp/copy/pkg/c.py", line 3\nImportError: cannot import name',
    )
    ordered, half = suspects_last(group, failed)
    assert [c.path for c in ordered] == ["pkg/a.py", "pkg/b.py", "pkg/d.py", "pkg/c.py"]
    assert half == 3
    silent = failed.model_copy(update={"output": "1 failed"})
    assert suspects_last(group, silent) == (group, 2)
