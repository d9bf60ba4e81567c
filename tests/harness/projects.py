"""Small real projects for the tests: writing a tree of files, the calc project with its
tests, and hashing a tree to show that a run left it as it was."""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Collection
from pathlib import Path

# Not the project's own files: git's, a run's state in .tars/, and what its tests leave.
NOT_PROJECT_FILES = frozenset({".git", ".tars", "__pycache__", ".pytest_cache"})

CALC = textwrap.dedent(
    """\
    import os
    import sys


    def add(a, b):
        return a + b


    def describe(value):
        if value == None:
            return "nothing"
        return f"value"
    """
)
CALC_TESTS = textwrap.dedent(
    """\
    from calc import add, describe


    def test_add():
        assert add(2, 3) == 5


    def test_describe_none():
        assert describe(None) == "nothing"


    def test_describe_value():
        assert describe(1) == "value"
    """
)


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return root


def calc_project(root: Path, *, extra: dict[str, str] | None = None) -> Path:
    """A flat project: calc.py with fixable findings and a passing pytest suite."""
    return write_tree(
        root,
        {
            "calc.py": CALC,
            "tests/test_calc.py": CALC_TESTS,
            "pytest.ini": "[pytest]\n",
            **(extra or {}),
        },
    )


def tree_hashes(root: Path, *, leave_out: Collection[str] = NOT_PROJECT_FILES) -> dict[str, str]:
    """sha256 of every file under root by relative path, but those below a LEAVE_OUT name."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not set(leave_out) & set(path.relative_to(root).parts)
    }
