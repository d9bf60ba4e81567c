"""A passing test run proves a candidate only when it ran the tests the untouched project
ran: at least one, and none skipped, deselected or lost on the way. Real projects, real
ruff fixes, real pytest runs."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tars_engine.core.learning import LearningStore
from tars_engine.core.state import FileOutcome, RunPhase

from tests.harness.projects import tree_hashes, write_tree
from tests.harness.tools import git
from tests.harness.workflow import (
    SHOP_FILES,
    commit_subjects,
    isolated_roles,
    learning,
    run_workflow,
    shop_project,
)

__all__ = ["isolated_roles", "learning"]


def commit_all(root: Path, message: str) -> None:
    git(root, "add", "-A")
    git(root, "-c", "user.name=T", "-c", "user.email=t@e", "commit", "-qm", message)


def test_a_suite_that_skips_everything_proves_nothing(
    tmp_path: Path, learning: LearningStore
) -> None:
    root = shop_project(tmp_path / "shop")
    write_tree(
        root,
        {
            "tests/conftest.py": textwrap.dedent(
                """\
                import pytest


                def pytest_collection_modifyitems(items):
                    for item in items:
                        item.add_marker(pytest.mark.skip(reason="not today"))
                """
            )
        },
    )
    commit_all(root, "skip everything")
    before, subjects = tree_hashes(root), commit_subjects(root)

    state = run_workflow(root, learning, targets=["shop"], auto_apply=True)

    assert state.phase is RunPhase.failed
    assert "no test ran: 4 collected, 4 skipped" in state.message, state.message
    assert state.statistics.improvements_accepted == 0
    assert tree_hashes(root) == before and commit_subjects(root) == subjects


def test_a_candidate_that_makes_tests_skip_is_rejected(
    tmp_path: Path, learning: LearningStore
) -> None:
    # compat.py's "unused" import is a re-export; without it this test skips instead of
    # failing, and the suite still passes.
    tests = (
        SHOP_FILES["tests/test_shop.py"]
        .replace(
            "from shop.compat import OrderedDict\n",
            "import pytest\n\nimport shop.compat as compat\n",
        )
        .replace(
            "def test_compat_reexport():\n    assert list(OrderedDict(a=1, b=2))",
            '@pytest.mark.skipif(not hasattr(compat, "OrderedDict"), reason="no re-export")\n'
            "def test_compat_reexport():\n    assert list(compat.OrderedDict(a=1, b=2))",
        )
    )
    assert "skipif" in tests
    root = shop_project(tmp_path / "shop")
    write_tree(root, {"tests/test_shop.py": tests})
    commit_all(root, "a test that skips without the re-export")

    state = run_workflow(root, learning, targets=["shop"], auto_apply=True)

    assert state.phase is RunPhase.succeeded, state.message
    compat = state.file("shop/compat.py")
    assert compat.outcome is FileOutcome.rejected
    assert "only 3 of the baseline's 4 tests ran" in compat.message, compat.message
    assert "from collections import OrderedDict" in (root / "shop/compat.py").read_text()
    assert state.file("shop/cart.py").outcome is FileOutcome.applied
