"""The learning store: outcomes in, priorities and few-shot examples out; and its effect on runs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from tars_api.run import RunPhase
from tars_api.vocabulary import EngineName
from tars_engine.core.learning import (
    LearningError,
    LearningStore,
    Outcome,
    TrackRecord,
    user_learning_store,
)
from tars_engine.core.models import (
    Finding,
    FindingKind,
    FindingSource,
    GenerateRequest,
    Location,
    Severity,
    SourceFile,
)
from tars_engine.core.state import RunOptions
from tars_engine.roles.edit_protocol import plan_tasks
from tars_engine.roles.ollama_engine import task_prompt
from tars_engine.transports.embedded import local_workflow

from tests.harness.ollama import TEST_MODEL, OllamaServer
from tests.harness.projects import tree_hashes
from tests.harness.workflow import isolated_roles, learning, run_workflow, shop_project

__all__ = ["isolated_roles", "learning"]


def outcome(
    path: str, rules: list[str], accepted: bool, diff: str = "", project: str = "/p"
) -> Outcome:
    return Outcome(
        run_id="r1",
        project=project,
        path=path,
        rules=rules,
        kinds=[FindingKind.style] * len(rules),
        engine=EngineName.static,
        candidate_id=f"c-{path}-{len(diff)}",
        diff=diff,
        accepted=accepted,
        rejection=None if accepted else "tests failed: 1 failures, 0 errors of 3",
        tests_passed=accepted,
    )


def finding(rule: str) -> Finding:
    return Finding(
        kind=FindingKind.style,
        severity=Severity.low,
        source=FindingSource.ruff,
        rule=rule,
        message=rule,
        location=Location(line=1),
        fix_available=True,
        fix_safe=True,
    )


def test_track_records_and_boosts(learning: LearningStore) -> None:
    learning.record(outcome("a.py", ["F401", "UP032"], accepted=True, diff="-a\n+b\n"))
    learning.record(outcome("b.py", ["F401"], accepted=False, diff="-c\n+d\n"))
    learning.record(outcome("b.py", ["F401"], accepted=False, diff="-e\n+f\n"))

    rules = learning.rule_records()
    assert (rules["F401"].accepted, rules["F401"].total) == (1, 3)
    assert (rules["UP032"].accepted, rules["UP032"].total) == (1, 1)
    assert rules["F401"].boost < 0 < rules["UP032"].boost
    files = learning.file_records("/p")
    # Attempts, not rules: a.py had one attempt fixing two rules.
    assert (files["a.py"].accepted, files["a.py"].total) == (1, 1)
    assert (files["b.py"].accepted, files["b.py"].total) == (0, 2)
    assert learning.file_records("/elsewhere") == {}
    assert learning.priority_boost([finding("UP032")], rules, files["a.py"]) > 0
    assert learning.priority_boost([finding("F401")], rules, files["b.py"]) < 0
    assert learning.priority_boost([finding("E999")], rules) == 0
    assert learning.rule_records(EngineName.ollama) == {}


def test_examples_are_recent_accepted_changes_one_per_rule(learning: LearningStore) -> None:
    learning.record(outcome("a.py", ["UP032"], accepted=True, diff="old diff\n"))
    learning.record(outcome("b.py", ["UP032"], accepted=True, diff="new diff\n"))
    learning.record(outcome("c.py", ["F401"], accepted=False, diff="failed diff\n"))
    learning.record(outcome("d.py", ["UP004"], accepted=True, diff="class diff\n"))

    examples = learning.examples(["UP032", "F401", "UP004"], limit=5)
    assert [(e.rule, e.diff) for e in examples] == [
        ("UP004", "class diff\n"),
        ("UP032", "new diff\n"),
    ]
    assert learning.examples(["F401"]) == []
    assert learning.examples([]) == []
    assert len(learning.examples(["UP032", "UP004"], limit=1)) == 1
    # The store is on disk: a new handle (the next run) sees the same history.
    again = LearningStore(learning.path)
    assert again.count() == 4


def test_learned_examples_reach_the_models_prompt(tmp_path: Path, learning: LearningStore) -> None:
    root = shop_project(tmp_path / "shop")
    assert run_workflow(root, learning, targets=["shop"]).phase is RunPhase.succeeded
    examples = learning.examples(["UP032"])
    assert examples
    content = (root / "shop" / "cart.py").read_text()
    request = GenerateRequest(
        file=SourceFile(path="shop/cart.py", content=content),
        findings=[],
        targets=["shop"],
        engine=EngineName.ollama,
        examples=examples,
        attempt=2,
        feedback="the tests failed: test_total",
    )
    [task] = plan_tasks(content, [finding("D103")])
    prompt = task_prompt(request.file.path, content, task, request)
    assert examples[0].diff.strip().splitlines()[-1] in prompt
    assert "Your previous answer was refused: the tests failed: test_total" in prompt


def test_a_run_with_a_real_model_changes_nothing_unproven(
    tmp_path: Path,
    learning: LearningStore,
    monkeypatch: pytest.MonkeyPatch,
    ollama_server: OllamaServer,
) -> None:
    root = shop_project(tmp_path / "shop")
    before = tree_hashes(root)
    monkeypatch.setenv("OLLAMA_HOST", ollama_server.url)
    state = run_workflow(root, learning, targets=["shop"], engine="ollama", model=TEST_MODEL)
    assert state.phase is RunPhase.succeeded, state.message
    assert state.model_check is not None and state.model_check.problem is None
    assert state.files and all(record.outcome is not None for record in state.files)
    assert all(record.message for record in state.files)
    # No auto-apply: the tree stays as it was, whatever was accepted into the patch.
    assert tree_hashes(root) == before


def mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_store_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    fresh = LearningStore(tmp_path / "made" / "for-it" / "learning.sqlite3")
    fresh.record(outcome("a.py", ["UP032"], True, diff="-x\n+y\n"))
    assert mode_of(fresh.path) == 0o600
    assert mode_of(fresh.path.parent) == 0o700

    # A store an older version left world-readable is closed when it is next opened.
    shared_dir = tmp_path / "shared"
    shared_dir.mkdir(mode=0o755)
    old = shared_dir / "learning.sqlite3"
    LearningStore(old)
    old.chmod(0o644)
    LearningStore(old)
    assert mode_of(old) == 0o600
    # ... but a directory the user chose is theirs: only TARS's own directory is closed.
    assert mode_of(shared_dir) == 0o755


def test_the_per_user_directory_is_closed_even_when_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TARS_LEARNING_DB")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    made_by_an_older_version = tmp_path / "state" / "tars"
    made_by_an_older_version.mkdir(parents=True, mode=0o755)
    store = user_learning_store()
    assert store.path == made_by_an_older_version / "learning.sqlite3"
    assert mode_of(made_by_an_older_version) == 0o700
    assert mode_of(store.path) == 0o600


def damaged_copy(path: Path, store: LearningStore) -> bytes:
    """A real SQLite file with one of its pages overwritten, as a failing disk leaves it."""
    for index in range(200):
        store.record(outcome(f"f{index}.py", ["UP032"], True, diff="+x\n" * 50))
    data = bytearray(store.path.read_bytes())
    page = 4096
    data[page * 2 : page * 3] = b"\x0d" + b"\xff" * (page - 1)
    path.write_bytes(bytes(data))
    return bytes(data)


@pytest.mark.parametrize("damage", ["not-a-database", "damaged-page"])
def test_a_corrupt_database_is_moved_aside_and_a_fresh_one_started(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "learning.sqlite3"
    if damage == "not-a-database":
        original = b"this is not a SQLite database, whatever its name says\n" * 20
        path.write_bytes(original)
    else:
        original = damaged_copy(path, LearningStore(tmp_path / "source.sqlite3"))

    store = LearningStore(path)

    assert store.set_aside is not None
    moved = store.set_aside.moved_to
    assert moved.parent == tmp_path and moved.name.startswith("learning.sqlite3.corrupt-")
    assert moved.read_bytes() == original
    assert mode_of(moved) == 0o600
    assert str(path) in store.set_aside.warning and str(moved) in store.set_aside.warning
    assert store.count() == 0
    store.record(outcome("a.py", ["UP032"], True))
    assert LearningStore(path).count() == 1 and LearningStore(path).set_aside is None


def test_a_path_that_cannot_hold_a_database_is_one_clear_error(tmp_path: Path) -> None:
    directory = tmp_path / "learning.sqlite3"
    directory.mkdir()
    with pytest.raises(
        LearningError, match=r"^cannot use the learning database .*: Is a directory;"
    ):
        LearningStore(directory)
    assert directory.is_dir() and not any(directory.iterdir())


def test_a_run_without_learning_neither_reads_nor_writes_the_store(
    tmp_path: Path, learning: LearningStore
) -> None:
    root = shop_project(tmp_path / "shop")
    learning.record(outcome("shop/cart.py", ["UP032"], True, diff="-a\n+b\n", project=str(root)))
    # Any query or write the run made would now fail: the store's file is a directory.
    learning.path.unlink()
    learning.path.mkdir()
    workflow = local_workflow(root, RunOptions(targets=["shop"], learning=False), learning=learning)
    assert workflow.learning is None

    state = workflow.run()

    assert state.phase is RunPhase.succeeded, state.message
    assert state.statistics.improvements_accepted > 0
    assert state.message.endswith("; learning off")
    assert learning.path.is_dir() and not any(learning.path.iterdir())


def test_a_rule_dropped_from_a_change_counts_against_the_rule_not_the_file(
    tmp_path: Path,
) -> None:
    store = LearningStore(tmp_path / "learning.sqlite3")
    store.record(outcome("pkg/a.py", ["F401"], accepted=True))
    store.record(
        outcome("pkg/a.py", ["SIM114"], accepted=False).model_copy(
            update={"dropped": True, "rejection": "its fix introduces SIM101", "diff": ""}
        )
    )

    assert store.rule_records()["SIM114"] == TrackRecord(key="SIM114", accepted=0, total=1)
    assert store.file_records("/p")["pkg/a.py"] == TrackRecord(key="pkg/a.py", accepted=1, total=1)
    with sqlite3.connect(store.path) as connection:
        rows = connection.execute("SELECT rule, dropped, rejection FROM outcomes").fetchall()
    assert sorted(rows) == [("F401", 0, None), ("SIM114", 1, "its fix introduces SIM101")]


def test_a_store_an_older_version_made_gains_the_dropped_column(tmp_path: Path) -> None:
    path = tmp_path / "learning.sqlite3"
    LearningStore(path).record(outcome("pkg/a.py", ["F401"], accepted=True))
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE outcomes DROP COLUMN dropped")

    reopened = LearningStore(path)
    reopened.record(outcome("pkg/b.py", ["UP032"], accepted=True))

    assert reopened.count() == 2
    assert set(reopened.rule_records()) == {"F401", "UP032"}
