"""The tests' virtualenv: made by the tester from PyPI, in the sandbox, cached by digest.

The project depends on `humanize` from PyPI, which neither TARS nor pytest brings: its
tests fail under the tester's own interpreter and pass in the virtualenv made for them.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from tars_api.run import TestEnvironment
from tars_api.vocabulary import SandboxMode
from tars_engine.core.gating import describe_failure
from tars_engine.core.models import TestRequest, TestResult
from tars_engine.core.settings import ReplicaSettings
from tars_engine.core.snapshot import pack_project
from tars_engine.roles.test_environment import dependency_files, environment_digest
from tars_engine.roles.tester import Tester

from tests.harness.projects import write_tree

RUN_ID = "run-env"
GREETER = {
    "pyproject.toml": """\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "greeter"
        version = "1.0"
        dependencies = ["humanize"]

        [project.optional-dependencies]
        test = ["pytest"]

        [tool.setuptools]
        packages = ["greeter"]
        """,
    "greeter/__init__.py": """\
        import humanize


        def greet(count):
            return f"hello to {humanize.intcomma(count)} people"
        """,
    "tests/test_greeter.py": """\
        from greeter import greet


        def test_greet():
            assert greet(1234) == "hello to 1,234 people"
        """,
}


@pytest.fixture
def tester(tmp_path: Path) -> Tester:
    return Tester(ReplicaSettings(scratch_dir=tmp_path / "scratch"))


def greeter(root: Path, **overrides: str) -> Path:
    files = {**GREETER, **overrides}
    write_tree(root, {name: textwrap.dedent(text) for name, text in files.items()})
    return root


def run(tester: Tester, root: Path, **kwargs: object) -> TestResult:
    ref = tester.put_snapshot(RUN_ID, pack_project(root))
    return tester.run_tests(TestRequest(snapshot=ref, candidates=[], **kwargs))


def test_without_an_environment_the_dependency_is_missing(tester: Tester, tmp_path: Path) -> None:
    result = run(tester, greeter(tmp_path / "p"))
    assert not result.passed and result.environment is None
    assert "No module named 'humanize'" in result.output


def test_the_project_and_its_extras_are_installed_then_reused(
    tester: Tester, tmp_path: Path
) -> None:
    project = greeter(tmp_path / "p")
    made = run(tester, project, environment=TestEnvironment(), sandbox=SandboxMode.required)
    assert made.passed, made.output
    assert made.executed == 1 and made.sandbox is not None and made.sandbox.isolated
    assert made.environment is not None and not made.environment.reused
    assert "made in" in made.environment.detail
    assert "pip install .[test] pytest from https://pypi.org/simple" in made.environment.detail
    # The tests ran with the virtualenv's interpreter, under the tester's scratch directory.
    venv = tester.environments.root / made.environment.digest
    assert made.command[0] == str(venv / "bin" / "python")

    again = run(tester, project, environment=TestEnvironment(), sandbox=SandboxMode.required)
    assert again.passed, again.output
    assert again.environment is not None and again.environment.reused
    assert again.environment.digest == made.environment.digest
    assert "reused" in again.environment.detail


def test_the_digest_follows_the_dependency_files_only(tmp_path: Path) -> None:
    project = greeter(tmp_path / "p")
    spec = TestEnvironment()
    before = environment_digest(project, spec)
    (project / "greeter" / "__init__.py").write_text("# code changes keep the environment\n")
    assert environment_digest(project, spec) == before
    assert environment_digest(project, TestEnvironment(timeout_seconds=60)) == before
    assert environment_digest(project, TestEnvironment(extras=[])) != before
    (project / "requirements-dev.txt").write_text("humanize\n")
    assert dependency_files(project) == [Path("pyproject.toml"), Path("requirements-dev.txt")]
    assert environment_digest(project, spec) != before


def test_a_setup_command_fills_the_virtualenv_instead(tester: Tester, tmp_path: Path) -> None:
    project = greeter(
        tmp_path / "p",
        **{"pyproject.toml": "[tool.pytest.ini_options]\n", "requirements.txt": "humanize\n"},
    )
    spec = TestEnvironment(setup_command=["pip", "install", "-r", "requirements.txt", "pytest"])
    result = run(tester, project, environment=spec)
    assert result.passed, result.output
    assert result.environment is not None
    assert "pip install -r requirements.txt pytest from https://pypi.org/simple" in (
        result.environment.detail
    )


def test_a_failed_setup_says_why_and_runs_no_test(tester: Tester, tmp_path: Path) -> None:
    pyproject = GREETER["pyproject.toml"].replace('"humanize"', '"tars-no-such-package-0xdead"')
    project = greeter(tmp_path / "p", **{"pyproject.toml": pyproject})
    result = run(tester, project, environment=TestEnvironment(timeout_seconds=300))
    assert not result.passed and result.tests_run == 0
    environment = result.environment
    assert environment is not None and environment.failed
    assert environment.detail.startswith("test environment setup failed after ")
    assert "tars-no-such-package-0xdead" in result.output
    assert describe_failure(result) == environment.detail
    # Nothing half made is kept: the next run makes the virtualenv again.
    assert not (tester.environments.root / environment.digest).exists()


def test_the_setup_sees_only_the_index_the_run_names(tester: Tester, tmp_path: Path) -> None:
    project = greeter(tmp_path / "p")
    # A closed port on loopback: pip finds no index there, whatever the tester's own
    # pip configuration (PIP_INDEX_URL, PIP_FIND_LINKS, pip.conf) would offer.
    spec = TestEnvironment(package_index="http://127.0.0.1:9/simple", timeout_seconds=120)
    result = run(tester, project, environment=spec)
    assert result.environment is not None and result.environment.failed
    assert "127.0.0.1:9" in result.output


def test_a_test_image_runs_the_tests_with_its_own_interpreter_and_makes_nothing(
    tester: Tester, tmp_path: Path
) -> None:
    # This interpreter stands for the image's: it has what these tests import (pytest only).
    project = greeter(
        tmp_path / "p",
        **{
            "greeter/__init__.py": "def greet(count):\n    return f'hello to {count:,} people'\n",
        },
    )
    image = TestEnvironment(image="localhost/greeter-tests:1")
    result = run(tester, project, environment=image, sandbox=SandboxMode.required)
    assert result.passed, result.output
    assert result.executed == 1
    assert result.command[0] == sys.executable
    assert result.environment is not None and not result.environment.failed
    assert result.environment.digest == "localhost/greeter-tests:1"
    assert result.environment.detail.startswith("image localhost/greeter-tests:1: its own Python")
    assert not tester.environments.root.exists()
