"""The analyzer in-process: ruff findings, AST metrics, priority, and bad content."""

from __future__ import annotations

import textwrap

import pytest
from tars_api.vocabulary import EngineName, Role
from tars_engine.core.models import (
    AnalysisReport,
    AnalyzeRequest,
    FindingKind,
    FindingSource,
    LintContext,
    ProjectFile,
    Severity,
    SourceFile,
)
from tars_engine.roles.analyzer import (
    COMPLEXITY_THRESHOLD,
    Analyzer,
    classify_rule,
    function_metrics,
)

MESSY = textwrap.dedent(
    """\
    import os
    import subprocess


    def run(command, cache={}):
        if command == None:
            return dict()
        return subprocess.call(command, shell=True)
    """
)


def analyze(path: str, content: str) -> AnalysisReport:
    return Analyzer().analyze(AnalyzeRequest(file=SourceFile(path=path, content=content)))


def test_ruff_findings_carry_kind_severity_location_and_fixability() -> None:
    report = analyze("pkg/messy.py", MESSY)
    assert report.error is None
    by_rule = {finding.rule: finding for finding in report.findings}

    unused = by_rule["F401"]
    assert (unused.kind, unused.source, unused.location.line) == (
        FindingKind.maintainability,
        FindingSource.ruff,
        1,
    )
    assert unused.fix_available and unused.fix_safe

    none_comparison = by_rule["E711"]
    assert none_comparison.fix_available and not none_comparison.fix_safe

    assert by_rule["B006"].kind is FindingKind.reliability
    assert by_rule["B006"].severity is Severity.high
    assert by_rule["S602"].kind is FindingKind.security
    assert not by_rule["S602"].fix_available
    assert by_rule["C408"].kind is FindingKind.performance
    assert report.priority > 0
    assert report.metrics["functions"] == 1


def test_codemod_findings_are_safe_typing_fixes_the_projects_ann_ignores_suppress() -> None:
    content = "def show(value):\n    print(value)\n\n\ndef _blank(line):\n    return not line\n"
    report = analyze("pkg/shown.py", content)
    codemod = [f for f in report.findings if f.source is FindingSource.codemod]
    assert [(f.rule, f.location.line, f.location.column) for f in codemod] == [
        ("TRS101", 1, 5),
        ("TRS102", 5, 5),
    ]
    assert all(f.kind is FindingKind.typing and f.fix_available and f.fix_safe for f in codemod)
    assert "`show` returns no value" in codemod[0].message

    ignoring = LintContext(
        configs=[ProjectFile(path="pyproject.toml", content='[tool.ruff]\nignore = ["ANN201"]\n')]
    )
    quiet = Analyzer().analyze(
        AnalyzeRequest(file=SourceFile(path="pkg/shown.py", content=content, lint=ignoring))
    )
    # `show` is public (ANN201, ignored); `_blank` is private (ANN202).
    assert [f.rule for f in quiet.findings if f.source is FindingSource.codemod] == ["TRS102"]


def test_clean_file_scores_below_messy_file() -> None:
    clean = '"""A clean module."""\n\n\ndef add(a: int, b: int) -> int:\n    """Add."""\n    return a + b\n'
    clean_report = analyze("pkg/clean.py", clean)
    assert clean_report.findings == []
    assert clean_report.priority == 0
    assert analyze("pkg/messy.py", MESSY).priority > clean_report.priority


def test_complexity_and_length_metrics_become_findings() -> None:
    branches = "\n".join(
        f"    if x == {i}:\n        return {i}" for i in range(COMPLEXITY_THRESHOLD + 2)
    )
    padding = "\n".join(f"    y{i} = {i}" for i in range(70))
    content = f"def tangled(x):\n{branches}\n    return -1\n\n\ndef long_one():\n{padding}\n    return y0\n"
    report = analyze("pkg/tangled.py", content)
    rules = {
        (finding.rule, finding.message.split("`")[1])
        for finding in report.findings
        if finding.source is FindingSource.metrics
    }
    assert ("complexity", "tangled") in rules
    assert ("function-length", "long_one") in rules
    assert report.metrics["max_complexity"] == COMPLEXITY_THRESHOLD + 3
    assert report.metrics["max_function_length"] == 72


def test_nested_function_is_measured_on_its_own() -> None:
    import ast

    content = textwrap.dedent(
        """\
        def outer(a, b):
            def inner(c):
                return c if c else 0
            return inner(a) if a and b else inner(b)
        """
    )
    measured = {m.name: m.complexity for m in function_metrics(ast.parse(content))}
    assert measured == {"outer": 3, "inner": 2}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("def broken(:\n    pass\n", "syntax error at line 1"),
        ("abc\x00def", "binary"),
        ("x = 1\n" * 200_000, "too large"),
    ],
)
def test_unanalysable_content_gives_an_error_report(content: str, expected: str) -> None:
    report = analyze("pkg/bad.py", content)
    assert report.error is not None and expected in report.error
    assert report.findings == [] and report.priority == 0


def test_rule_classification_prefers_the_specific_code() -> None:
    assert classify_rule("F401") == (FindingKind.maintainability, Severity.low)
    assert classify_rule("F821") == (FindingKind.reliability, Severity.high)
    assert classify_rule("S608")[1] is Severity.high
    assert classify_rule("D103")[0] is FindingKind.documentation
    assert classify_rule("XYZ1")[0] is FindingKind.maintainability


def test_info_reports_role_engine_and_capabilities() -> None:
    info = Analyzer().info()
    assert info.role is Role.analyzer
    assert info.engine is EngineName.static
    assert "ruff" in info.capabilities and "model-review" not in info.capabilities
