"""The environment a run's tests need: a virtualenv made from the package index the run
names, or the interpreter of the test image the run's own tester runs.

Without one the tests run with the tester's own interpreter, which holds TARS and pytest
and nothing a project depends on. With one, the tester makes a virtualenv: the project
installed with its test extras (`pip install <copy>[test] pytest`), or the run's setup
command with the new virtualenv active. The tests still import the copy, not the
installed project: the copy's import roots come first on PYTHONPATH.

Virtualenvs are kept under `<scratch>/environments/<digest>`. The digest covers the
project's dependency files, the settings and the interpreter, so a run whose dependencies
have not changed reuses the virtualenv, and one whose dependencies changed gets a new one.
Making one runs the project's build code, so it runs in the sandbox like the tests, with
the network (pip needs the index) and with only the run's directory and the virtualenv
writable. Pip sees only the index the run names: its configuration files and the tester's
own index settings are left out. A virtualenv is complete only once its record is written
(a tester killed half way leaves one that the next run removes and makes again).

A run with a test image is tested only by a tester replica of that image (the operator
makes one for the run, the coordinator sends it that run's tests and no other's): its own
interpreter has what the tests import, so nothing is made.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from tars_api.run import TestEnvironment

from tars_engine.core.events import one_line
from tars_engine.core.models import EnvironmentUse, WireModel
from tars_engine.core.settings import private_dir
from tars_engine.roles.process_group import GroupOutcome
from tars_engine.roles.sandbox import VIRTUAL_ENV, allowed_environment

ENVIRONMENTS_DIR_NAME = "environments"
RECORD_NAME = "tars-environment.json"
DEPENDENCY_FILE_NAMES = ("pyproject.toml", "setup.py", "setup.cfg")
DEPENDENCY_FILE_PATTERNS = (
    "requirements*.txt",
    "requirements*.in",
    "requirements/*.txt",
    "requirements/*.in",
    "constraints*.txt",
)
# Bumped when the way a virtualenv is made changes, so that none made the old way is reused.
RECIPE_VERSION = "1"
IDLE_ENVIRONMENT_SECONDS = 7 * 24 * 3600
DIGEST_SHOWN_CHARS = 12
FAILURE_LINES_SHOWN = 3
# What the setup keeps of the tester's environment besides the allowlist: how to trust the
# index's certificate and how to reach it through a proxy. Nothing naming another index.
SETUP_VARIABLES = frozenset(
    {
        "PIP_CERT",
        "PIP_CLIENT_CERT",
        "PIP_DEFAULT_TIMEOUT",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    }
)

StepRunner = Callable[[list[str], Path, float], GroupOutcome]
"""Runs one setup step (argv, the virtualenv it may write, seconds left) in the sandbox."""


class EnvironmentRecord(WireModel):
    """Written last into a complete virtualenv: how it was made."""

    recipe: str
    seconds: float


@dataclass(frozen=True)
class PreparedEnvironment:
    """A usable virtualenv (`python` set), or why none could be made."""

    use: EnvironmentUse
    python: Path | None
    step: list[str]
    """The setup step that failed; empty when the virtualenv is usable."""
    output: str
    """What the failed step printed."""


def image_environment(spec: TestEnvironment) -> PreparedEnvironment:
    """A test image's own interpreter: the image holds what the tests need, nothing is made."""
    image = spec.image or ""
    detail = (
        f"image {image}: its own Python {platform.python_version()} ({sys.executable}), "
        "no virtualenv made"
    )
    use = EnvironmentUse(digest=image, reused=False, seconds=0.0, detail=detail)
    return PreparedEnvironment(use, Path(sys.executable), [], "")


def dependency_files(project: Path) -> list[Path]:
    """The files that say what the project needs, relative to it, in a stable order."""
    found = {name for name in DEPENDENCY_FILE_NAMES if (project / name).is_file()}
    for pattern in DEPENDENCY_FILE_PATTERNS:
        found.update(str(path.relative_to(project)) for path in project.glob(pattern))
    return sorted(Path(name) for name in found if (project / name).is_file())


def environment_digest(project: Path, spec: TestEnvironment) -> str:
    digest = hashlib.sha256()
    settings = spec.model_dump_json(exclude={"timeout_seconds"})
    digest.update(f"{RECIPE_VERSION}\0{sys.version}\0{settings}\0".encode())
    for relative in dependency_files(project):
        digest.update(f"{relative}\0".encode())
        digest.update(hashlib.sha256((project / relative).read_bytes()).digest())
    return digest.hexdigest()


def setup_steps(spec: TestEnvironment, project: Path, venv: Path) -> list[list[str]]:
    """The commands that make the virtualenv: it is made empty, then filled by the tester's
    pip (no pip of its own is needed) or, for a setup command, by pip installed into it."""
    make = [sys.executable, "-m", "venv", "--without-pip", str(venv)]
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
    if spec.setup_command:
        return [make, [*pip, "pip"], list(spec.setup_command)]
    return [make, [*pip, f"{project}{spec.extras_suffix}", "pytest"]]


def setup_variables(
    source: Mapping[str, str], spec: TestEnvironment, venv: Path, run_dir: Path
) -> dict[str, str]:
    env = allowed_environment(source, (), None)
    env.update({key: value for key, value in source.items() if key in SETUP_VARIABLES})
    env.update(
        {
            "PATH": os.pathsep.join(filter(None, [str(venv / "bin"), env.get("PATH")])),
            VIRTUAL_ENV: str(venv),
            "HOME": str(run_dir / "home"),
            "TMPDIR": str(run_dir / "tmp"),
            "PIP_INDEX_URL": spec.package_index,
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_NO_INPUT": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    return env


def _failure_detail(step: list[str], outcome: GroupOutcome, seconds: float) -> str:
    if outcome.timed_out:
        why = "timed out"
    elif outcome.returncode is None:
        why = "did not start"
    else:
        why = f"exit {outcome.returncode}"
    last_lines = [line for line in outcome.output.strip().splitlines() if line.strip()]
    tail = " / ".join(last_lines[-FAILURE_LINES_SHOWN:]) or "no output"
    return one_line(
        f"test environment setup failed after {seconds:.1f} s ({shlex.join(step)}: {why}): {tail}",
        600,
    )


@contextlib.contextmanager
def _locked(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive lock on `path` (yields False when `wait` is off and someone holds it)."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_record(venv: Path) -> EnvironmentRecord | None:
    try:
        return EnvironmentRecord.model_validate_json((venv / RECORD_NAME).read_bytes())
    except (OSError, ValidationError):
        return None


class EnvironmentCache:
    """One tester's virtualenvs, by digest; runs with the same digest share one."""

    def __init__(self, scratch_dir: Path) -> None:
        self.root = scratch_dir / ENVIRONMENTS_DIR_NAME

    def prepare(
        self, spec: TestEnvironment, project: Path, run_step: StepRunner
    ) -> PreparedEnvironment:
        digest = environment_digest(project, spec)
        venv = private_dir(self.root) / digest
        shown = f"virtualenv {digest[:DIGEST_SHOWN_CHARS]}"
        with _locked(self.root / f"{digest}.lock"):
            record = _read_record(venv)
            if record is not None:
                os.utime(venv / RECORD_NAME)
                detail = f"{shown} reused (made in {record.seconds:.1f} s: {record.recipe})"
                use = EnvironmentUse(digest=digest, reused=True, seconds=0.0, detail=detail)
                return PreparedEnvironment(use, venv / "bin" / "python", [], "")
            prepared = self._make(spec, project, venv, run_step, shown)
        self._prune(keep=digest)
        return prepared

    def _make(
        self, spec: TestEnvironment, project: Path, venv: Path, run_step: StepRunner, shown: str
    ) -> PreparedEnvironment:
        shutil.rmtree(venv, ignore_errors=True)  # what a tester killed half way left
        venv.mkdir(mode=0o700)
        started = time.monotonic()
        for step in setup_steps(spec, project, venv):
            left = spec.timeout_seconds - (time.monotonic() - started)
            outcome = run_step(step, venv, max(left, 1.0))
            if not outcome.succeeded:
                shutil.rmtree(venv, ignore_errors=True)
                seconds = time.monotonic() - started
                use = EnvironmentUse(
                    digest=venv.name,
                    reused=False,
                    seconds=round(seconds, 3),
                    detail=_failure_detail(step, outcome, seconds),
                    failed=True,
                )
                return PreparedEnvironment(use, None, step, outcome.output)
        seconds = time.monotonic() - started
        made = EnvironmentRecord(recipe=spec.recipe, seconds=round(seconds, 3))
        partial = venv / f"{RECORD_NAME}.partial"
        partial.write_text(made.model_dump_json(), encoding="utf-8")
        os.replace(partial, venv / RECORD_NAME)
        use = EnvironmentUse(
            digest=venv.name,
            reused=False,
            seconds=made.seconds,
            detail=f"{shown} made in {seconds:.1f} s: {made.recipe}",
        )
        return PreparedEnvironment(use, venv / "bin" / "python", [], "")

    def _prune(self, *, keep: str) -> None:
        """Remove the virtualenvs no run has used for a week (unless one is being made)."""
        idle_since = time.time() - IDLE_ENVIRONMENT_SECONDS
        for venv in self.root.iterdir():
            if venv.name == keep or not venv.is_dir():
                continue
            try:
                last_used = (venv / RECORD_NAME).stat().st_mtime
            except FileNotFoundError:
                continue  # being made now, or left half made: its next use replaces it
            if last_used >= idle_since:
                continue
            with _locked(self.root / f"{venv.name}.lock", wait=False) as held:
                if held:
                    shutil.rmtree(venv, ignore_errors=True)
