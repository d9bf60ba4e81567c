"""The static generator, candidate validation and the diff helpers, in-process."""

from __future__ import annotations

import textwrap

import pytest
from tars_api.vocabulary import EngineName
from tars_engine.core.diffs import PatchError, apply_unified_diff, make_unified_diff
from tars_engine.core.models import (
    AnalyzeRequest,
    Candidate,
    DropCause,
    Finding,
    GenerateRequest,
    GenerateResult,
    SourceFile,
)
from tars_engine.core.validation import candidate_rejection, is_inside_targets, is_test_file
from tars_engine.roles.analyzer import Analyzer
from tars_engine.roles.generator import Generator

from tests.harness.projects import CALC


def findings_for(path: str, content: str) -> list[Finding]:
    return Analyzer().analyze(AnalyzeRequest(file=SourceFile(path=path, content=content))).findings


def generate(path: str, content: str, **kwargs: object) -> GenerateResult:
    source = SourceFile(path=path, content=content)
    request = GenerateRequest(
        file=source,
        findings=kwargs.pop("findings", None) or findings_for(path, content),
        targets=kwargs.pop("targets", ["pkg"]),
        **kwargs,
    )
    return Generator().generate(request)


def test_safe_fixes_become_a_validated_diff_with_rationale() -> None:
    result = generate("pkg/calc.py", CALC)
    candidate = result.candidate
    assert candidate is not None, result.rejection
    assert candidate.rules == ["F401", "F541"]
    assert "F401 (2 fixed)" in candidate.rationale
    assert candidate.diff.startswith("--- a/pkg/calc.py\n+++ b/pkg/calc.py\n")
    updated = apply_unified_diff(CALC, candidate.diff, "pkg/calc.py")
    assert "import os" not in updated and 'return "value"' in updated
    assert "value == None" in updated  # E711's fix is unsafe and was not allowed
    assert (
        candidate_rejection(candidate, SourceFile(path="pkg/calc.py", content=CALC), ["pkg"])
        is None
    )


def test_unsafe_fixes_only_when_allowed() -> None:
    content = "def f(x) -> bool:\n    return x == None\n"
    refused = generate("pkg/m.py", content)
    assert refused.candidate is None and "E711 need unsafe fixes" in (refused.rejection or "")
    allowed = generate("pkg/m.py", content, allow_unsafe_fixes=True)
    assert allowed.candidate is not None
    assert "x is None" in apply_unified_diff(content, allowed.candidate.diff, "pkg/m.py")


def test_imports_left_unused_by_a_fix_are_removed_too() -> None:
    content = (
        "from typing import List\n\n\ndef f(values: List[int]) -> List[int]:\n    return values\n"
    )
    findings = [f for f in findings_for("pkg/t.py", content) if f.rule == "UP006"]
    result = generate("pkg/t.py", content, findings=findings, allow_unsafe_fixes=True)
    assert result.candidate is not None, result.rejection
    updated = apply_unified_diff(content, result.candidate.diff, "pkg/t.py")
    assert "typing" not in updated and "list[int]" in updated
    assert set(result.candidate.rules) == {"UP006", "F401"}


def test_fixes_go_on_to_a_fixed_point_as_ruff_does() -> None:
    """Allowing unsafe fixes turns UP031 (printf-style) into `str.format`, which UP032
    (f-string) fixes next: one candidate with both, not a file skipped for UP032."""
    content = 'def label(count):\n    return "%s items" % count\n'
    narrow = generate("pkg/m.py", content)
    assert narrow.candidate is None and "UP031 need unsafe fixes" in (narrow.rejection or "")

    result = generate("pkg/m.py", content, allow_unsafe_fixes=True)

    assert result.candidate is not None, result.rejection
    assert result.candidate.rules == ["UP031", "UP032"]
    assert "UP032: cleanup of what the fixes above left behind" in result.candidate.rationale
    fixed = apply_unified_diff(content, result.candidate.diff, "pkg/m.py")
    assert fixed == 'def label(count):\n    return f"{count} items"\n'


@pytest.mark.parametrize(
    ("path", "targets", "reason"),
    [
        ("pkg/tests/helpers.py", ["pkg"], "test file"),
        ("pkg/test_calc.py", ["pkg"], "test file"),
        ("pkg/conftest.py", ["pkg"], "test file"),
        ("other/calc.py", ["pkg"], "outside the targets"),
        ("../calc.py", ["."], "not a project-relative path"),
    ],
)
def test_files_the_run_may_not_touch_are_rejected(
    path: str, targets: list[str], reason: str
) -> None:
    result = generate(path, CALC, targets=targets, findings=findings_for("x.py", CALC))
    assert result.candidate is None and reason in (result.rejection or "")


# SIM114 merges the branches into `isinstance(x, int) or isinstance(x, float)`, which
# SIM101 would merge again, but only with an unsafe fix.
SAME_BRANCHES = """\
import os


def kind(x):
    if isinstance(x, int):
        return "number"
    elif isinstance(x, float):
        return "number"
    return "other"
"""


def test_a_rule_whose_fix_introduces_what_cannot_be_fixed_is_dropped_not_the_file() -> None:
    result = generate("pkg/kind.py", SAME_BRANCHES)

    assert result.candidate is not None, result.rejection
    assert result.candidate.rules == ["F401"]
    assert [(d.rule, d.cause) for d in result.dropped_rules] == [
        ("SIM114", DropCause.unfixable_follow_up)
    ]
    assert "introduces SIM101" in result.dropped_rules[0].reason
    assert "SIM114 left out: its fix introduces SIM101" in result.candidate.rationale
    fixed = apply_unified_diff(SAME_BRANCHES, result.candidate.diff, "pkg/kind.py")
    assert "import os" not in fixed and "elif isinstance(x, float)" in fixed


def test_with_unsafe_fixes_the_same_rule_is_kept_with_its_follow_up() -> None:
    result = generate("pkg/kind.py", SAME_BRANCHES, allow_unsafe_fixes=True)

    assert result.candidate is not None, result.rejection
    assert result.candidate.rules == ["F401", "SIM101", "SIM114"]
    assert result.dropped_rules == []
    fixed = apply_unified_diff(SAME_BRANCHES, result.candidate.diff, "pkg/kind.py")
    assert "isinstance(x, (int, float))" in fixed


def test_a_file_is_skipped_only_when_no_rule_is_left() -> None:
    content = SAME_BRANCHES.replace("import os\n", "")
    result = generate("pkg/kind.py", content)
    assert result.candidate is None
    assert result.rejection == (
        "no rule's fix is clean: SIM114: its fix introduces SIM101, which this run cannot fix"
    )
    assert [d.rule for d in result.dropped_rules] == ["SIM114"]


def test_only_the_rules_asked_for_are_fixed_whatever_the_attempt() -> None:
    content = CALC + "\n\ndef shout(word):\n    return f'{word}!' if word != None else f'silence'\n"
    failed = "The previous change failed the project's tests (1 failed)."
    every = generate("pkg/calc.py", content, allow_unsafe_fixes=True)
    retried = generate("pkg/calc.py", content, allow_unsafe_fixes=True, attempt=2, feedback=failed)
    one = generate("pkg/calc.py", content, allow_unsafe_fixes=True, rules=["F541"])
    none_fixable = generate("pkg/calc.py", content, rules=["E711"])

    assert every.candidate is not None and retried.candidate is not None
    # Deterministic: narrowing is the workflow's, by the rules it asks for.
    assert retried.candidate.diff == every.candidate.diff
    assert every.candidate.rules == ["E711", "F401", "F541"]
    assert one.candidate is not None and one.candidate.rules == ["F541"]
    assert none_fixable.candidate is None
    assert "E711 need unsafe fixes" in (none_fixable.rejection or "")


def test_nothing_fixable_is_a_rejection() -> None:
    content = "def f(x):\n    return x\n"
    result = generate("pkg/m.py", content)
    assert result.candidate is None and "no ruff-fixable" in (result.rejection or "")


def _candidate(diff: str, path: str = "pkg/calc.py", content: str = CALC) -> Candidate:
    return Candidate(
        id="c",
        path=path,
        base_sha256=SourceFile(path=path, content=content).sha256,
        diff=diff,
        rationale="r",
        engine=EngineName.ollama,
    )


def test_validation_rejects_bad_candidates() -> None:
    source = SourceFile(path="pkg/calc.py", content=CALC)
    other_file = make_unified_diff("pkg/other.py", "a\n", "b\n")
    assert "another file" in (candidate_rejection(_candidate(other_file), source, ["pkg"]) or "")
    breaks = make_unified_diff("pkg/calc.py", CALC, CALC.replace("def add(a, b):", "def add(a, b)"))
    assert "does not parse" in (candidate_rejection(_candidate(breaks), source, ["pkg"]) or "")
    wrong_base = _candidate(make_unified_diff("pkg/calc.py", CALC, CALC + "x = 1\n"), content="y")
    assert "different content" in (candidate_rejection(wrong_base, source, ["pkg"]) or "")
    noop = "--- a/pkg/calc.py\n+++ b/pkg/calc.py\n@@ -1,1 +1,1 @@\n-import os\n+import os\n"
    assert candidate_rejection(_candidate(noop), source, ["pkg"]) == "no-op change"


def test_path_predicates() -> None:
    assert (
        is_test_file("a/b_test.py")
        and is_test_file("test/x.py")
        and not is_test_file("a/testing.py")
    )
    assert is_inside_targets("src/a.py", ["src"]) and not is_inside_targets("srcx/a.py", ["src"])
    assert is_inside_targets("a.py", ["."]) and not is_inside_targets("../a.py", ["."])


def test_diff_round_trip_without_trailing_newline_and_with_form_feed() -> None:
    old = "a\n\x0cb\nc"
    new = "a\n\x0cb\nc\nd"
    diff = make_unified_diff("f.py", old, new)
    assert "\\ No newline at end of file" in diff
    assert apply_unified_diff(old, diff, "f.py") == new


def test_lenient_apply_reads_sloppy_model_diffs() -> None:
    old = textwrap.dedent(
        """\
        def f(x):
            y = 1

            return x
        """
    )
    # Wrong counts, wrong line numbers, trimmed blank context line.
    sloppy = "--- a/m.py\n+++ b/m.py\n@@ -7,9 +7,9 @@\n def f(x):\n-    y = 1\n\n     return x\n"
    with pytest.raises(PatchError):
        apply_unified_diff(old, sloppy, "m.py")
    assert apply_unified_diff(old, sloppy, "m.py", lenient=True) == "def f(x):\n\n    return x\n"
