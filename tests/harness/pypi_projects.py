"""Real projects from PyPI, tried as a new user would: the sdist of a pinned release,
fetched once into a cache outside the repository and checked against its sha256, then
unpacked into a fresh git repository.

Without the network or the package a test skips, except under CI=true, where it fails;
the benchmarks (bench/) use the same releases and say why in one line.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import NoReturn

import pytest
from pydantic import BaseModel, ConfigDict

from tests.harness.tools import git_init

PROJECTS_CACHE = Path.home() / ".cache" / "tars-selfcoding" / "projects"
PIP_TIMEOUT_SECONDS = 300
# Marks a test environment pip finished: one without it was cut short, and is made again.
ENVIRONMENT_COMPLETE = "tars-complete"


class PypiProject(BaseModel):
    """A release on PyPI whose own tests run with pytest."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    sha256: str
    package: str
    """The directory of its code: what TARS is pointed at."""
    test_requirements: tuple[str, ...] = ()
    """What its tests need besides the package itself, pinned; empty: nothing."""
    deselected_tests: tuple[str, ...] = ()
    """Its tests that fail here before any change (each says why): left out of every run."""

    def test_command(self, python: Path) -> list[str]:
        """Its tests with `python`, less those deselected."""
        deselect = [argument for test in self.deselected_tests for argument in ("--deselect", test)]
        return [str(python), "-m", "pytest", "-q", *deselect]

    @property
    def sdist_stem(self) -> str:
        """The sdist's name without its suffix, which is also its top directory (PEP 625)."""
        return f"{re.sub(r'[-_.]+', '_', self.name).lower()}-{self.version}"

    @property
    def sdist_name(self) -> str:
        return f"{self.sdist_stem}.tar.gz"


class ProjectUnavailableError(Exception):
    """The sdist cannot be fetched here: no network, or PyPI does not have it."""


class ProjectDigestError(Exception):
    """The cached sdist is not the pinned release."""


BOLTONS = PypiProject(
    name="boltons",
    version="26.2.0",
    sha256="d39cfd15c1a1c3bd4d705c82252fa9edb8e4f5e8cc039f8e39afac7b1b47e92c",
    package="boltons",
)
ATTRS = PypiProject(
    name="attrs",
    version="26.1.0",
    sha256="d03ceb89cb322a8fd706d4fb91940737b6642aa36998fe130a9bc96c985eff32",
    package="src/attr",
    # The release itself too: its packaging tests read the installed metadata.
    test_requirements=(
        "attrs==26.1.0",
        "pytest==9.2.0",
        "hypothesis==6.170.17",
        "pympler==1.1",
        "cloudpickle==3.1.3",
    ),
    deselected_tests=(
        # Fails on Python 3.11.7 before any change: the annotation it reads comes back None.
        "tests/test_converters.py::TestPipe::test_wrapped_annotation",
    ),
)
DATEUTIL = PypiProject(
    name="python-dateutil",
    version="4.0.0",
    sha256="d7295ff14fdc0f92f662100bfb6c551d160ca090f2939f1ec5b9794265c03f06",
    package="src/dateutil",
    # pytest-cov registers the no_cover mark its tests use; attrs, a test's own import.
    test_requirements=(
        "pytest==9.2.0",
        "pytest-cov==7.1.0",
        "hypothesis==6.170.17",
        "freezegun==1.5.5",
        "attrs==26.1.0",
    ),
    deselected_tests=(
        # They fail before any change: they expect other data than this machine's time zone
        # database (Debian's tzdata) holds.
        "tests/test_tz.py::test_gettz_link",
        "tests/test_tzfile.py::test_gettz_local_abbreviation_without_time_zone_data",
        "tests/test_tzpath_data.py::test_dst_matches_tzdata_zi",
    ),
)


def _unavailable(problem: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"required under CI=true: {problem}")
    pytest.skip(problem)


def _pip(arguments: list[str], what: str) -> None:
    try:
        completed = subprocess.run(
            arguments, capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        raise ProjectUnavailableError(f"{what} took more than {PIP_TIMEOUT_SECONDS}s") from None
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise ProjectUnavailableError(f"{what} failed: {last}")


def _download(project: PypiProject, into: Path) -> None:
    """pip's own download of the sdist into `into`."""
    spec = f"{project.name}=={project.version}"
    _pip(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:"]
        + ["--no-deps", "--dest", str(into), spec],
        f"pip download {spec}",
    )


def fetch_sdist(project: PypiProject) -> Path:
    """The project's sdist in the cache, fetched if it is not there yet, of the pinned digest."""
    cached = PROJECTS_CACHE / project.sdist_name
    if not cached.is_file():
        PROJECTS_CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=PROJECTS_CACHE, prefix=".download-") as download:
            _download(project, Path(download))
            fetched = Path(download) / project.sdist_name
            if not fetched.is_file():
                raise ProjectUnavailableError(f"pip download gave no {project.sdist_name}")
            # A rename: two test processes fetching at once leave one whole file.
            os.replace(fetched, cached)
    digest = hashlib.sha256(cached.read_bytes()).hexdigest()
    if digest != project.sha256:
        raise ProjectDigestError(
            f"{cached} has sha256 {digest}, not the pinned {project.sha256}; delete it to "
            "fetch it again"
        )
    return cached


def sdist(project: PypiProject) -> Path:
    """`fetch_sdist` for a test: unavailable, it skips (fails under CI); not pinned, it fails."""
    try:
        return fetch_sdist(project)
    except ProjectUnavailableError as exc:
        _unavailable(str(exc))
    except ProjectDigestError as exc:
        pytest.fail(str(exc))


def extract_sdist(archive: Path, project: PypiProject, root: Path) -> Path:
    """The sdist `archive` of `project` unpacked at `root` (which must not exist yet)."""
    with tempfile.TemporaryDirectory(prefix="tars-sdist-") as scratch:
        with tarfile.open(archive) as opened:
            opened.extractall(scratch, filter="data")
        shutil.move(Path(scratch) / project.sdist_stem, root)
    return root


def tests_virtualenv(project: PypiProject) -> Path:
    """The python of a virtualenv with the project's test requirements (not the project:
    its tests import the copy under test), made once per requirements and interpreter."""
    made_of = "\n".join([sys.version, *project.test_requirements])
    key = hashlib.sha256(made_of.encode()).hexdigest()[:16]
    venv = PROJECTS_CACHE / "environments" / f"{project.sdist_stem}-{key}"
    python = venv / "bin" / "python"
    if (venv / ENVIRONMENT_COMPLETE).is_file():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    _pip([sys.executable, "-m", "venv", str(venv)], f"making {venv}")
    if project.test_requirements:
        _pip(
            [str(python), "-m", "pip", "install", "--quiet", *project.test_requirements],
            f"pip install {' '.join(project.test_requirements)}",
        )
    (venv / ENVIRONMENT_COMPLETE).touch()
    return python


def unpacked(project: PypiProject, root: Path) -> Path:
    """The project's sdist unpacked at `root`, a git repository with it all in one commit."""
    return git_init(extract_sdist(sdist(project), project, root))
