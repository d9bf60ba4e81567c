"""The import-linter contracts in pyproject.toml hold, and they do catch a wrong import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.harness.kubectl import REPOSITORY

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
SOURCE_ROOTS = ("operator", "cli", "replica-images")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports over the packages under `tree`, with the repository's contracts."""
    path = os.pathsep.join(str(tree / root) for root in SOURCE_ROOTS)
    return subprocess.run(
        [str(LINT_IMPORTS), str(REPOSITORY / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_sources(destination: Path) -> Path:
    for root in SOURCE_ROOTS:
        shutil.copytree(
            REPOSITORY / root,
            destination / root,
            ignore=shutil.ignore_patterns("__pycache__", "*.yaml"),
        )
    return destination


def test_the_repository_keeps_its_layers() -> None:
    result = lint_imports(REPOSITORY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_api_importing_the_engine_breaks_the_layers(tmp_path: Path) -> None:
    tree = copy_sources(tmp_path)
    vocabulary = tree / "operator" / "tars_api" / "vocabulary.py"
    vocabulary.write_text(vocabulary.read_text() + "\nimport tars_engine.core.models  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "tars_api.vocabulary -> tars_engine.core.models" in result.stdout, result.stdout


def test_the_operator_importing_engine_internals_breaks_the_contract(tmp_path: Path) -> None:
    tree = copy_sources(tmp_path)
    config = tree / "operator" / "tars_operator" / "config.py"
    config.write_text(config.read_text() + "\nimport tars_engine.core.settings  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "tars_operator.config -> tars_engine.core.settings" in result.stdout, result.stdout
