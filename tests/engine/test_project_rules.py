"""The project's own rules win: its ruff configuration, its Python version, its bytes.

Real ruff on real files: the configuration is read from a project written to disk, the
way the coordinator reads it, and a whole run on a real git repository shows what is
committed, byte for byte and mode for mode.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from tars_api.run import RunPhase
from tars_engine.core.diffs import keep_file_conventions
from tars_engine.core.learning import LearningStore
from tars_engine.core.models import AnalyzeRequest, Finding, GenerateRequest, SourceFile
from tars_engine.core.ruff_config import (
    RuleChoice,
    capped_target_version,
    governing_config,
    lint_context,
    rule_choice,
    selectors_overlap,
)
from tars_engine.core.selection import SkipReason
from tars_engine.roles import ruff_tool
from tars_engine.roles.analyzer import Analyzer
from tars_engine.roles.generator import Generator

from tests.harness.projects import write_tree
from tests.harness.tools import git, git_init
from tests.harness.workflow import isolated_roles, learning, run_workflow

__all__ = ["isolated_roles", "learning"]

BOM = b"\xef\xbb\xbf"
UNUSED_IMPORT_AND_FSTRING = 'import os\n\n\ndef name():\n    return f"tars"\n'
OLD_TYPING = textwrap.dedent(
    """\
    from typing import List


    def first(values: List[int]) -> List[int]:
        return values[:1]
    """
)


def pyproject(requires_python: str, ruff: str = "") -> str:
    return f'[project]\nname = "p"\nrequires-python = "{requires_python}"\n\n{ruff}'


def findings_in(root: Path, path: str) -> list[Finding]:
    content = (root / path).read_bytes().decode("utf-8")
    source = SourceFile(path=path, content=content, lint=lint_context(root, path))
    report = Analyzer().analyze(AnalyzeRequest(file=source))
    assert report.error is None, report.error
    return report.findings


def rules_in(root: Path, path: str) -> set[str]:
    return {finding.rule for finding in findings_in(root, path)}


def test_an_ignored_rule_is_neither_reported_nor_fixed(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "pyproject.toml": pyproject(">=3.9", '[tool.ruff.lint]\nignore = ["F401"]\n'),
            "pkg/mod.py": UNUSED_IMPORT_AND_FSTRING,
        },
    )
    findings = findings_in(tmp_path, "pkg/mod.py")
    assert "F401" not in {f.rule for f in findings}
    assert "F541" in {f.rule for f in findings}
    content = (tmp_path / "pkg/mod.py").read_text()
    source = SourceFile(
        path="pkg/mod.py", content=content, lint=lint_context(tmp_path, "pkg/mod.py")
    )
    result = Generator().generate(GenerateRequest(file=source, findings=findings, targets=["pkg"]))
    assert result.candidate is not None, result.rejection
    assert result.candidate.rules == ["F541"]
    assert "-import os" not in result.candidate.diff


def test_an_ignored_family_keeps_the_engine_from_adding_its_rules(tmp_path: Path) -> None:
    # The engine adds D103 (missing docstring) where a project has not chosen; a project
    # that ignores all of D must not get it back on the engine's account.
    write_tree(tmp_path, {"a/pkg/mod.py": UNUSED_IMPORT_AND_FSTRING})
    write_tree(
        tmp_path,
        {
            "b/pyproject.toml": pyproject(">=3.9", '[tool.ruff.lint]\nignore = ["D"]\n'),
            "b/pkg/mod.py": UNUSED_IMPORT_AND_FSTRING,
        },
    )
    assert "D103" in rules_in(tmp_path / "a", "pkg/mod.py")
    assert not {rule for rule in rules_in(tmp_path / "b", "pkg/mod.py") if rule.startswith("D")}


def test_per_file_ignores_hold(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "pyproject.toml": pyproject(
                ">=3.9", '[tool.ruff.lint.per-file-ignores]\n"pkg/legacy.py" = ["F541"]\n'
            ),
            "pkg/legacy.py": UNUSED_IMPORT_AND_FSTRING,
            "pkg/mod.py": UNUSED_IMPORT_AND_FSTRING,
        },
    )
    assert "F541" in rules_in(tmp_path, "pkg/mod.py")
    assert "F541" not in rules_in(tmp_path, "pkg/legacy.py")


def test_a_project_that_selects_its_rules_gets_exactly_those(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "pyproject.toml": pyproject(">=3.9", '[tool.ruff.lint]\nselect = ["F401"]\n'),
            "pkg/mod.py": UNUSED_IMPORT_AND_FSTRING + OLD_TYPING,
        },
    )
    assert rules_in(tmp_path, "pkg/mod.py") == {"F401"}


@pytest.mark.parametrize(
    ("files", "upgraded"),
    [
        ({"pyproject.toml": pyproject(">=3.7")}, False),
        ({"pyproject.toml": pyproject(">=3.7", '[tool.ruff]\ntarget-version = "py312"\n')}, False),
        ({"pyproject.toml": pyproject(">=3.7"), "ruff.toml": "line-length = 100\n"}, False),
        ({"pyproject.toml": pyproject(">=3.11")}, True),
    ],
    ids=["requires-python", "newer-target-capped", "ruff-toml-beside", "requires-3.11"],
)
def test_no_fix_needs_a_newer_python_than_requires_python(
    tmp_path: Path, files: dict[str, str], upgraded: bool
) -> None:
    write_tree(tmp_path, {**files, "pkg/mod.py": OLD_TYPING})
    found = rules_in(tmp_path, "pkg/mod.py")
    assert ({"UP006", "UP035"} <= found) is upgraded
    assert not ({"UP006", "UP035"} & found) or upgraded


def test_without_a_configuration_ruff_chooses_the_target_version() -> None:
    assert "--target-version" not in ruff_tool.project_arguments(RuleChoice())
    named = RuleChoice(target_version="py310", requires_python=">=3.8, <4")
    assert capped_target_version(named) == "py38"
    assert capped_target_version(named.model_copy(update={"requires_python": ">=3.10"})) is None
    assert capped_target_version(named.model_copy(update={"requires_python": ">=3.6"})) == "py37"


def test_the_nearest_configuration_governs_over_what_it_extends(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "pyproject.toml": pyproject(">=3.9", '[tool.ruff.lint]\nselect = ["E"]\n'),
            "base.toml": '[lint]\nignore = ["F401"]\n',
            "pkg/sub/ruff.toml": 'extend = "../../base.toml"\n',
            "pkg/sub/__init__.py": "",
            "pkg/sub/mod.py": UNUSED_IMPORT_AND_FSTRING,
        },
    )
    context = lint_context(tmp_path, "pkg/sub/mod.py")
    assert {config.path for config in context.configs} == {
        "pyproject.toml",
        "base.toml",
        "pkg/sub/ruff.toml",
    }
    assert "pkg/sub/__init__.py" in context.layout
    assert governing_config(context, "pkg/sub/mod.py") == "pkg/sub/ruff.toml"
    choice = rule_choice(context, "pkg/sub/mod.py")
    assert (choice.selects, choice.ignored) == (False, ("F401",))
    assert rules_in(tmp_path, "pkg/sub/mod.py") >= {"F541"}
    assert "F401" not in rules_in(tmp_path, "pkg/sub/mod.py")


def test_import_order_knows_the_projects_own_packages(tmp_path: Path) -> None:
    # Sorted as ruff sorts with `pkg` first-party: without the project's layout ruff
    # would take `pkg` for a third-party package and call the order wrong (I001).
    content = "import os\n\nimport requests\n\nimport pkg.other\n\nprint(os, requests, pkg)\n"
    write_tree(
        tmp_path,
        {
            "pyproject.toml": '[tool.ruff.lint]\nselect = ["I"]\n',
            "src/pkg/__init__.py": "",
            "src/pkg/other.py": "",
            "src/pkg/mod.py": content,
        },
    )
    context = lint_context(tmp_path, "src/pkg/mod.py")
    assert {"src/pkg/", "src/pkg/__init__.py"} <= set(context.layout)
    assert rules_in(tmp_path, "src/pkg/mod.py") == set()
    without_layout = SourceFile(
        path="src/pkg/mod.py", content=content, lint=context.model_copy(update={"layout": []})
    )
    assert [diagnostic.code for diagnostic in ruff_tool.check(without_layout)] == ["I001"]


@pytest.mark.parametrize(
    ("first", "second", "overlap"),
    [
        ("S", "SIM108", False),
        ("PT", "PTH100", False),
        ("D", "D101", True),
        ("E4", "E401", True),
        ("UP", "UP006", True),
        ("C", "C901", True),
        ("PL", "PLR2004", True),
        ("PLR", "PLW0120", False),
        ("ALL", "F401", True),
        ("F401", "F841", False),
    ],
)
def test_selectors_overlap_as_ruff_selects(first: str, second: str, overlap: bool) -> None:
    assert selectors_overlap(first, second) is overlap
    assert selectors_overlap(second, first) is overlap


def test_new_content_keeps_the_files_line_endings_and_byte_order_mark() -> None:
    crlf = "\ufeffa = 1\r\nb = 2\r\n"
    assert (
        keep_file_conventions(crlf, "a = 1\nb = 3\nc = 4\n") == "\ufeffa = 1\r\nb = 3\r\nc = 4\r\n"
    )
    assert keep_file_conventions("a = 1\n", "\ufeffa = 2\r\n") == "a = 2\n"
    mixed = "a = 1\r\nb = 2\n"
    assert keep_file_conventions(mixed, "a = 1\r\nb = 3\n") == "a = 1\r\nb = 3\n"


def test_a_file_with_a_byte_order_mark_is_analysed() -> None:
    source = SourceFile(path="pkg/mod.py", content="\ufeff" + UNUSED_IMPORT_AND_FSTRING)
    report = Analyzer().analyze(AnalyzeRequest(file=source))
    assert report.error is None
    assert {"F401", "F541"} <= {finding.rule for finding in report.findings}


def test_ruff_gives_back_line_endings_and_byte_order_mark_as_they_went_in() -> None:
    content = "\ufeff" + UNUSED_IMPORT_AND_FSTRING.replace("\n", "\r\n")
    source = SourceFile(path="pkg/mod.py", content=content)
    fixed, _ = ruff_tool.fix(source, ["F541"], unsafe=False)
    assert fixed == content.replace('f"tars"', '"tars"')


def test_a_users_own_ruff_configuration_does_not_judge_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A replica has no user configuration; a local run must judge the same way.
    user_config = '[lint.per-file-ignores]\n"*.py" = ["F541"]\n'
    write_tree(tmp_path / "config", {"ruff/ruff.toml": user_config})
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    write_tree(tmp_path / "project", {"pkg/mod.py": UNUSED_IMPORT_AND_FSTRING})
    assert "F541" in rules_in(tmp_path / "project", "pkg/mod.py")


def test_a_cleanup_the_project_declares_unfixable_is_not_made(tmp_path: Path) -> None:
    # UP006 leaves `List` unused; removing it (F401) is the engine's usual follow-up, but
    # this project lets no one fix F401 automatically, so the change would add a finding.
    write_tree(
        tmp_path,
        {
            "pyproject.toml": pyproject(">=3.9", '[tool.ruff.lint]\nunfixable = ["F401"]\n'),
            "pkg/mod.py": OLD_TYPING,
        },
    )
    findings = [f for f in findings_in(tmp_path, "pkg/mod.py") if f.rule == "UP006"]
    assert findings
    source = SourceFile(
        path="pkg/mod.py", content=OLD_TYPING, lint=lint_context(tmp_path, "pkg/mod.py")
    )
    result = Generator().generate(
        GenerateRequest(file=source, findings=findings, targets=["pkg"], allow_unsafe_fixes=True)
    )
    assert result.candidate is None
    assert result.rejection == (
        "no rule's fix is clean: UP006: its fix introduces F401, which this run cannot fix"
    )
    assert [drop.rule for drop in result.dropped_rules] == ["UP006"]


def _mode(root: Path, path: str) -> str:
    return git(root, "ls-files", "-s", "--", path).split()[0]


def test_a_run_changes_only_the_bytes_its_improvements_ask_for(
    tmp_path: Path, learning: LearningStore
) -> None:
    root = tmp_path / "project"
    write_tree(
        root,
        {
            "pyproject.toml": pyproject(
                ">=3.7",
                '[tool.ruff.lint]\nignore = ["F401"]\n\n'
                '[tool.ruff.lint.per-file-ignores]\n"pkg/legacy.py" = ["F541"]\n\n'
                '[tool.pytest.ini_options]\ntestpaths = ["tests"]\n',
            ),
            "pkg/__init__.py": "",
            "pkg/typed.py": OLD_TYPING + UNUSED_IMPORT_AND_FSTRING.replace("name", "typed_name"),
            "pkg/legacy.py": UNUSED_IMPORT_AND_FSTRING,
            "tests/test_pkg.py": textwrap.dedent(
                """\
                from pkg import alias, crlf, legacy, marked, tool, typed


                def test_names():
                    assert typed.first([3, 4]) == [3]
                    assert typed.typed_name() == legacy.name() == "tars"
                    assert crlf.name() == marked.name() == tool.name() == alias.name() == "tars"
                """
            ),
        },
    )
    crlf = UNUSED_IMPORT_AND_FSTRING.replace("\n", "\r\n").encode()
    (root / "pkg/crlf.py").write_bytes(b'"""Written on Windows."""\r\n' + crlf + b"# end\r\n")
    (root / "pkg/marked.py").write_bytes(BOM + UNUSED_IMPORT_AND_FSTRING.encode())
    (root / "pkg/tool.py").write_text("#!/usr/bin/env python3\n" + UNUSED_IMPORT_AND_FSTRING)
    (root / "pkg/tool.py").chmod(0o755)
    os.symlink("legacy.py", root / "pkg/alias.py")
    git_init(root)
    before = {
        path: (root / path).read_bytes()
        for path in ("pkg/crlf.py", "pkg/marked.py", "pkg/typed.py")
    }

    state = run_workflow(root, learning, targets=["pkg"], auto_apply=True)

    assert state.phase is RunPhase.succeeded, state.message
    applied = {change.path for change in state.applied}
    assert applied == {"pkg/crlf.py", "pkg/marked.py", "pkg/tool.py", "pkg/typed.py"}
    # The project ignores F401 everywhere and F541 in legacy.py; requires-python 3.7
    # allows no `list[int]`.
    for path in applied:
        assert b"import os" in (root / path).read_bytes()
    assert (root / "pkg/legacy.py").read_text() == UNUSED_IMPORT_AND_FSTRING
    assert (root / "pkg/typed.py").read_bytes() == before["pkg/typed.py"].replace(
        b'f"tars"', b'"tars"'
    )
    # CRLF on every line, and only the fixed line differs.
    fixed = (root / "pkg/crlf.py").read_bytes()
    assert fixed.count(b"\n") == fixed.count(b"\r\n") == before["pkg/crlf.py"].count(b"\r\n")
    old_lines = before["pkg/crlf.py"].splitlines(keepends=True)
    new_lines = fixed.splitlines(keepends=True)
    assert len(new_lines) == len(old_lines)
    changed = [(old, new) for old, new in zip(old_lines, new_lines, strict=True) if old != new]
    assert changed == [(b'    return f"tars"\r\n', b'    return "tars"\r\n')]
    marked = (root / "pkg/marked.py").read_bytes()
    assert marked == before["pkg/marked.py"].replace(b'f"tars"', b'"tars"')
    assert marked.startswith(BOM)
    # Modes as git records them: the link stays a link, the script stays executable.
    assert _mode(root, "pkg/alias.py") == "120000"
    assert os.readlink(root / "pkg/alias.py") == "legacy.py"
    assert _mode(root, "pkg/tool.py") == "100755"
    assert b'return "tars"' in (root / "pkg/tool.py").read_bytes()
    skipped = {skip.path: skip for skip in state.skipped}
    assert skipped["pkg/alias.py"].reason is SkipReason.symlink
    assert "pkg/legacy.py" in skipped["pkg/alias.py"].detail
    assert git(root, "status", "--porcelain", "--untracked-files=no") == ""
