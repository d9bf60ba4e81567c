"""Real git projects for the workflow tests, and helpers to run and inspect a run."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tars_engine.core.events import EventCallback
from tars_engine.core.learning import LearningStore
from tars_engine.core.state import RunOptions, StateStore, WorkflowState
from tars_engine.transports.embedded import local_workflow

from tests.harness.projects import write_tree
from tests.harness.tools import git, git_init

REPOSITORY = Path(__file__).resolve().parents[2]
SAMPLE_PROJECT = REPOSITORY / "examples" / "sample-project"

# A small shop package. Every module has fixes ruff calls safe, and one of them is a
# trap: compat.py re-exports OrderedDict for its callers, so removing the "unused"
# import (F401) breaks the tests. Only the tests can tell.
SHOP_FILES = {
    "pyproject.toml": '[project]\nname = "shop"\nversion = "1.0"\n\n[tool.pytest.ini_options]\ntestpaths = ["tests"]\n',
    "shop/__init__.py": '"""A tiny shop."""\n',
    "shop/compat.py": textwrap.dedent(
        '''\
        """Names older callers import from here."""

        from collections import OrderedDict
        '''
    ),
    "shop/pricing.py": textwrap.dedent(
        '''\
        """Prices with tax."""


        class Price(object):
            def __init__(self, cents, rate):
                self.cents = cents
                self.rate = rate

            def gross(self):
                return self.cents + self.cents * self.rate // 100

            def label(self):
                return "{} cents".format(self.gross())
        '''
    ),
    "shop/cart.py": textwrap.dedent(
        '''\
        """A cart of priced items."""

        import os
        from typing import List

        from shop.pricing import Price


        def total(prices: List[Price]) -> int:
            return sum(price.gross() for price in prices)


        def describe(prices: List[Price]) -> str:
            return "{} items, {} cents".format(len(prices), total(prices))
        '''
    ),
    "shop/names.py": textwrap.dedent(
        '''\
        """Display names."""

        import sys


        def title(name):
            return "Item: {}".format(name.strip().title())
        '''
    ),
    "tests/test_shop.py": textwrap.dedent(
        """\
        from shop.cart import describe, total
        from shop.compat import OrderedDict
        from shop.names import title
        from shop.pricing import Price


        def test_prices():
            assert Price(1000, 20).gross() == 1200
            assert Price(1000, 20).label() == "1200 cents"


        def test_cart():
            items = [Price(100, 10), Price(200, 0)]
            assert total(items) == 310
            assert describe(items) == "2 items, 310 cents"


        def test_title():
            assert title("  tea pot ") == "Item: Tea Pot"


        def test_compat_reexport():
            assert list(OrderedDict(a=1, b=2)) == ["a", "b"]
        """
    ),
}


def shop_project(root: Path, *, repository: bool = True) -> Path:
    write_tree(root, SHOP_FILES)
    return git_init(root) if repository else root


def shop_origin(tmp_path: Path) -> Path:
    """A bare repository holding the shop project on main, as a git source's origin."""
    project = shop_project(tmp_path / "origin-work")
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(project), str(bare)], check=True)
    return bare


def sample_project(root: Path) -> Path:
    shutil.copytree(
        SAMPLE_PROJECT, root, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache")
    )
    return git_init(root)


def run_workflow(
    root: Path,
    learning: LearningStore,
    *,
    on_event: EventCallback | None = None,
    stop_requested: object = None,
    instances: int = 2,
    **options: object,
) -> WorkflowState:
    workflow = local_workflow(
        root,
        RunOptions.model_validate(options),
        instances=instances,
        learning=learning,
        on_event=on_event,
        stop_requested=stop_requested,  # type: ignore[arg-type]
    )
    return workflow.run()


def load_state(root: Path) -> WorkflowState:
    state = StateStore(root / ".tars").load()
    assert state is not None
    return state


def project_tests_pass(root: Path) -> bool:
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(root)},
    )
    return completed.returncode == 0


def commit_subjects(root: Path) -> list[str]:
    return git(root, "log", "--format=%s").splitlines()


@pytest.fixture
def learning(tmp_path: Path) -> LearningStore:
    return LearningStore(tmp_path / "learning" / "learning.sqlite3")


@pytest.fixture(autouse=True)
def isolated_roles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Role scratch space and the per-user learning store stay inside the test's directory."""
    monkeypatch.setenv("TARS_SCRATCH_DIR", str(tmp_path / "scratch"))
    monkeypatch.setenv("TARS_LEARNING_DB", str(tmp_path / "learning" / "user.sqlite3"))
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
