"""Small real projects for the role tests: code, tests, and a helper to hash a tree."""

from __future__ import annotations

import hashlib
import subprocess
import textwrap
from pathlib import Path

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


def git_init(root: Path) -> Path:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "init")
    return root


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and ".git" not in path.relative_to(root).parts
    }
