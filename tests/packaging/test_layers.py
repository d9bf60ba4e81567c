"""The import-linter contracts in pyproject.toml hold, and they do catch a wrong import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize(
    ("module", "wrong_import"),
    [
        # The API must stand on nothing else of the project.
        ("operator/tars_api/vocabulary.py", "tars_engine.core.models"),
        # The operator may use the engine only through tars_engine.contract.
        ("operator/tars_operator/config.py", "tars_engine.core.settings"),
    ],
)
def test_a_wrong_import_breaks_a_contract(tmp_path: Path, module: str, wrong_import: str) -> None:
    tree = copy_sources(tmp_path)
    source = tree / module
    source.write_text(source.read_text() + f"\nimport {wrong_import}  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    importer = module.split("/", 1)[1].removesuffix(".py").replace("/", ".")
    assert f"{importer} -> {wrong_import}" in result.stdout, result.stdout
