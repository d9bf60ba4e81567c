"""The learning store: outcomes in, priorities and few-shot examples out; and its effect on runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from tars_api.run import RunPhase
from tars_api.vocabulary import EngineName
from tars_engine.core.learning import LearningStore, Outcome
from tars_engine.core.models import (
    Finding,
    FindingKind,
    FindingSource,
    GenerateRequest,
    Location,
    Severity,
    SourceFile,
)
from tars_engine.roles.edit_protocol import plan_tasks
from tars_engine.roles.ollama_engine import task_prompt

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
