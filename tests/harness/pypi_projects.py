"""Real projects from PyPI, tried as a new user would: the sdist of a pinned release,
fetched once into a cache outside the repository and checked against its sha256, then
unpacked into a fresh git repository.

Without the network or the package a test skips, except under CI=true, where it fails.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from tests.harness.tools import git_init

PROJECTS_CACHE = Path.home() / ".cache" / "tars-selfcoding" / "projects"
PIP_TIMEOUT_SECONDS = 300


class PypiProject(BaseModel):
    """A release on PyPI whose own tests run with pytest and need nothing but the package."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    sha256: str
    package: str
    """The directory of its code: what TARS is pointed at."""

    @property
    def sdist_name(self) -> str:
        return f"{self.name}-{self.version}.tar.gz"


BOLTONS = PypiProject(
    name="boltons",
    version="26.2.0",
    sha256="d39cfd15c1a1c3bd4d705c82252fa9edb8e4f5e8cc039f8e39afac7b1b47e92c",
    package="boltons",
)


def _unavailable(problem: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"required under CI=true: {problem}")
    pytest.skip(problem)


def _download(project: PypiProject, into: Path) -> None:
    """pip's own download of the sdist into `into`; a failure skips, or fails under CI."""
    spec = f"{project.name}=={project.version}"
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:"]
            + ["--no-deps", "--dest", str(into), spec],
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        _unavailable(f"pip download {spec} took more than {PIP_TIMEOUT_SECONDS}s")
        return
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        _unavailable(f"pip download {spec} failed: {last}")


def sdist(project: PypiProject) -> Path:
    """The project's sdist in the cache, fetched if it is not there yet, of the pinned digest."""
    cached = PROJECTS_CACHE / project.sdist_name
    if not cached.is_file():
        PROJECTS_CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=PROJECTS_CACHE, prefix=".download-") as download:
            _download(project, Path(download))
            fetched = Path(download) / project.sdist_name
            if not fetched.is_file():
                _unavailable(f"pip download gave no {project.sdist_name}")
            # A rename: two test processes fetching at once leave one whole file.
            os.replace(fetched, cached)
    digest = hashlib.sha256(cached.read_bytes()).hexdigest()
    if digest != project.sha256:
        pytest.fail(
            f"{cached} has sha256 {digest}, not the pinned {project.sha256}; delete it to "
            "fetch it again"
        )
    return cached


def unpacked(project: PypiProject, root: Path) -> Path:
    """The project's sdist unpacked at `root`, a git repository with it all in one commit."""
    with tempfile.TemporaryDirectory(prefix="tars-sdist-") as scratch:
        with tarfile.open(sdist(project)) as archive:
            archive.extractall(scratch, filter="data")
        shutil.move(Path(scratch) / f"{project.name}-{project.version}", root)
    return git_init(root)
