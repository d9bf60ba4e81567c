"""Tester role: apply candidates to a fresh copy of a project snapshot and run its tests.

The user's tree is never touched: every run extracts the cached snapshot into its
own temporary directory under the scratch dir and removes it afterwards. The test
command runs in the sandbox (roles.sandbox) and its own process group; a timeout
kills the whole group. Snapshots are cached per run: a run sees only its own, each is
checked against its digest every time it is used, and old ones are pruned.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from tars_api.vocabulary import Role

from tars_engine.core.diffs import PatchError, apply_unified_diff
from tars_engine.core.models import (
    Candidate,
    RoleInfo,
    SandboxUse,
    SnapshotRef,
    TestRequest,
    TestResult,
)
from tars_engine.core.role_set import SnapshotMissingError
from tars_engine.core.settings import ReplicaSettings, private_dir
from tars_engine.core.snapshot import SKIPPED_DIRS, archive_digest, extract_snapshot, verify_archive
from tars_engine.roles.process_group import GroupOutcome, kill_group, run_in_group
from tars_engine.roles.sandbox import (
    SandboxPolicy,
    allowed_environment,
    bwrap_argv,
    command_executable,
    interpreter_paths,
    sandbox_choice,
    tester_hidden_paths,
)
from tars_engine.roles.test_environment import (
    EnvironmentCache,
    PreparedEnvironment,
    image_environment,
    setup_variables,
)

OUTPUT_HEAD_CHARS = 3000
OUTPUT_TAIL_CHARS = 9000
IMPORT_ROOT_DEPTH = 3
MAX_EARLY_CANCELS = 256
# A run's gates each pack a snapshot; the newest few serve the batches still in flight.
MAX_SNAPSHOTS_PER_RUN = 4
# A run not heard from for this long has ended (or died): its snapshots go.
IDLE_RUN_SECONDS = 6 * 3600
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_PYTHON_NAMES = frozenset({"python", "python3", f"python3.{sys.version_info.minor}"})
_PYTEST_CONFIG_MARKERS = {
    "pyproject.toml": "[tool.pytest",
    "setup.cfg": "[tool:pytest]",
    "tox.ini": "[pytest]",
}


def trim_output(text: str) -> str:
    """Head and tail of long output: the start says what ran, the end says what failed."""
    if len(text) <= OUTPUT_HEAD_CHARS + OUTPUT_TAIL_CHARS:
        return text
    dropped = len(text) - OUTPUT_HEAD_CHARS - OUTPUT_TAIL_CHARS
    return f"{text[:OUTPUT_HEAD_CHARS]}\n... [{dropped} characters trimmed] ...\n{text[-OUTPUT_TAIL_CHARS:]}"


def _has_test_files(root: Path) -> bool:
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [name for name in subdirs if not name.startswith(".")]
        if any(
            name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))
            for name in names
        ):
            return True
    return False


def detect_test_command(root: Path) -> list[str] | None:
    """pytest (with this interpreter) when the project has pytest config or test files."""
    uses_pytest = (root / "pytest.ini").is_file() or (root / "conftest.py").is_file()
    for name, marker in _PYTEST_CONFIG_MARKERS.items():
        config = root / name
        if not uses_pytest and config.is_file():
            uses_pytest = marker in config.read_text(encoding="utf-8", errors="replace")
    has_test_dir = (root / "tests").is_dir() or (root / "test").is_dir()
    if uses_pytest or has_test_dir or _has_test_files(root):
        return [sys.executable, "-m", "pytest", "-q"]
    return None


def resolve_command(command: list[str], python: str = sys.executable) -> list[str]:
    """Run `python`/`pytest` with `python`: the run's virtualenv, or the tester's own."""
    if len(command) == 1 and " " in command[0]:
        command = shlex.split(command[0])
    if not command:
        return command
    if command[0] in _PYTHON_NAMES or command[0] == sys.executable:
        return [python, *command[1:]]
    if command[0] == "pytest":
        return [python, "-m", "pytest", *command[1:]]
    return command


def import_roots(project: Path, max_depth: int = IMPORT_ROOT_DEPTH) -> list[Path]:
    """The project root plus every directory holding a top-level package (src/, lib/, ...).

    They go first on PYTHONPATH so the tests import the copy, never an editable
    install of the same project, which would point back at the user's tree.
    """
    package_parents: set[Path] = set()
    pending = [(project, 0)]
    while pending:
        directory, depth = pending.pop()
        for child in directory.iterdir():
            if not child.is_dir() or child.name.startswith(".") or child.name in SKIPPED_DIRS:
                continue
            if (child / "__init__.py").is_file():
                package_parents.add(directory)
            elif depth + 1 < max_depth:
                pending.append((child, depth + 1))
    return [project, *sorted(package_parents - {project})]


def _test_environment(
    project: Path, run_dir: Path, junit_path: Path, request: TestRequest, command: list[str]
) -> dict[str, str]:
    """The allowlisted environment, with a private HOME and TMPDIR inside the run's directory."""
    executable = command_executable(command, os.environ.get("PATH"))
    env = allowed_environment(os.environ, request.env_names, executable)
    paths = [str(root) for root in import_roots(project)]
    env.update(
        {
            # Any pytest the command starts writes its counts here, also under make or tox.
            "PYTEST_ADDOPTS": f"--junitxml={junit_path} -p no:cacheprovider",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": os.pathsep.join(paths),
            "PYTHONUNBUFFERED": "1",
            "TMPDIR": str(run_dir / "tmp"),
            "HOME": str(run_dir / "home"),
        }
    )
    return env


@dataclass(frozen=True)
class JunitReport:
    """What pytest's JUnit XML says ran: totals over its test suites, and the tests that ran."""

    tests: int
    failures: int
    errors: int
    skipped: int
    executed_ids: frozenset[str]

    @property
    def executed_digest(self) -> str:
        return hashlib.sha256("\n".join(sorted(self.executed_ids)).encode()).hexdigest()


def read_junit(junit_path: Path) -> JunitReport | None:
    """The report pytest wrote, or None when there is none (another runner, or a crash)."""
    if not junit_path.is_file():
        return None
    try:
        root = ElementTree.parse(junit_path).getroot()
    except ElementTree.ParseError:
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    totals = [0, 0, 0, 0]
    executed: set[str] = set()
    for suite in suites:
        for index, attribute in enumerate(("tests", "failures", "errors", "skipped")):
            totals[index] += int(suite.get(attribute, "0") or 0)
        for case in suite.iter("testcase"):
            if case.find("skipped") is None:
                executed.add(f"{case.get('classname', '')}::{case.get('name', '')}")
    return JunitReport(*totals, executed_ids=frozenset(executed))


def _mtime(path: Path) -> float | None:
    """When `path` was last used; None once another tester of this scratch dir removed it."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


def apply_candidates(project: Path, candidates: list[Candidate]) -> str | None:
    """Apply each candidate in order; the first one that does not apply says why."""
    root = project.resolve()
    for candidate in candidates:
        target = (root / candidate.path).resolve()
        if not target.is_relative_to(root) or target == root:
            return f"{candidate.id}: path {candidate.path!r} is outside the project"
        if not target.is_file():
            return f"{candidate.id}: {candidate.path} does not exist in the snapshot"
        data = target.read_bytes()
        if hashlib.sha256(data).hexdigest() != candidate.base_sha256:
            return (
                f"{candidate.id}: {candidate.path} differs from the content the diff was made for"
            )
        try:
            updated = apply_unified_diff(data.decode("utf-8"), candidate.diff, candidate.path)
        except (PatchError, UnicodeDecodeError) as exc:
            return f"{candidate.id}: diff does not apply to {candidate.path}: {exc}"
        target.write_bytes(updated.encode("utf-8"))
    return None


class Tester:
    """The tester role in-process; snapshots are cached under the scratch dir by sha256."""

    __test__ = False  # not a pytest class

    def __init__(self, settings: ReplicaSettings | None = None) -> None:
        self.settings = settings or ReplicaSettings.from_env()
        self.snapshot_dir = self.settings.scratch_dir / "snapshots"
        self.runs_dir = self.settings.scratch_dir / "runs"
        self.environments = EnvironmentCache(self.settings.scratch_dir)
        self._lock = threading.Lock()
        self._running: dict[str, subprocess.Popen[bytes]] = {}
        # Cancelled before their command started (the cancel overtook the request); bounded,
        # since a cancel may also come after its run ended.
        self._cancelled: collections.deque[str] = collections.deque(maxlen=MAX_EARLY_CANCELS)

    def info(self) -> RoleInfo:
        return self.settings.role_info(
            Role.tester,
            [
                "snapshots",
                "pytest-detection",
                "junit-counts",
                "process-group-timeout",
                "sandbox",
                "test-environments",
            ],
        )

    def _archive_path(self, ref: SnapshotRef) -> Path:
        if not _DIGEST.match(ref.digest):
            raise SnapshotMissingError(f"not a sha256 digest: {ref.digest!r}")
        return self.snapshot_dir / ref.run_id / f"{ref.digest}.tar.gz"

    def has_snapshot(self, ref: SnapshotRef) -> bool:
        return self._archive_path(ref).is_file()

    def put_snapshot(self, run_id: str, archive: bytes) -> SnapshotRef:
        ref = SnapshotRef(run_id=run_id, digest=archive_digest(archive))
        path = self._archive_path(ref)
        if path.is_file() and archive_digest(path.read_bytes()) == ref.digest:
            return ref
        verify_archive(archive, self.settings.archive_limits)
        private_dir(self.snapshot_dir)
        run_snapshots = private_dir(path.parent)
        # Written aside and renamed, so a concurrent reader never sees half an archive.
        handle, partial = tempfile.mkstemp(dir=run_snapshots, suffix=".partial")
        with os.fdopen(handle, "wb") as out:
            out.write(archive)
        os.replace(partial, path)
        self._prune(ref.run_id)
        return ref

    def _verified_archive(self, ref: SnapshotRef) -> bytes:
        """The snapshot's bytes, if they still hash to its digest; a changed one is dropped."""
        path = self._archive_path(ref)
        try:
            archive = path.read_bytes()
        except FileNotFoundError:
            raise SnapshotMissingError(f"snapshot {ref.digest} is not on this tester") from None
        if archive_digest(archive) != ref.digest:
            path.unlink(missing_ok=True)
            raise SnapshotMissingError(
                f"snapshot {ref.digest} changed since it was stored; it was dropped"
            )
        now = time.time()
        for used in (path, path.parent):
            os.utime(used, (now, now))
        return archive

    def _prune(self, run_id: str) -> None:
        """Keep the run's newest snapshots only, and nothing of runs idle too long."""
        used = {path: _mtime(path) or 0.0 for path in (self.snapshot_dir / run_id).glob("*.tar.gz")}
        for stale in sorted(used, key=used.__getitem__, reverse=True)[MAX_SNAPSHOTS_PER_RUN:]:
            stale.unlink(missing_ok=True)
        idle_since = time.time() - IDLE_RUN_SECONDS
        for other in self.snapshot_dir.iterdir():
            last_used = _mtime(other)
            if other.name == run_id or last_used is None or last_used >= idle_since:
                continue
            if other.is_dir():
                shutil.rmtree(other, ignore_errors=True)
            else:
                other.unlink(missing_ok=True)

    def run_tests(self, request: TestRequest) -> TestResult:
        archive = self._verified_archive(request.snapshot)
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=private_dir(self.runs_dir)))
        try:
            project = run_dir / "project"
            project.mkdir()
            (run_dir / "tmp").mkdir()
            (run_dir / "home").mkdir()
            copy = run_dir / "snapshot.tar.gz"
            copy.write_bytes(archive)
            extract_snapshot(copy, project, self.settings.archive_limits)
            copy.unlink()
            apply_error = apply_candidates(project, request.candidates)
            command = request.test_command or detect_test_command(project) or []
            if apply_error is not None:
                return TestResult(
                    passed=False, command=resolve_command(command), apply_error=apply_error
                )
            if not command:
                return TestResult(
                    passed=False,
                    command=[],
                    output="no test command: the project has no pytest configuration or test "
                    "files; give the run a testCommand",
                )
            if request.environment is None:
                return self._run_command(resolve_command(command), project, run_dir, request)
            prepared = self._prepare_environment(project, run_dir, request)
            if isinstance(prepared, TestResult):
                return prepared
            result = self._run_command(
                resolve_command(command, str(prepared.python)), project, run_dir, request
            )
            return result.model_copy(update={"environment": prepared.use})
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    def cancel_tests(self, request_id: str) -> None:
        with self._lock:
            process = self._running.get(request_id)
            if process is None:
                self._cancelled.append(request_id)
                return
        kill_group(process)

    def _prepare_environment(
        self, project: Path, run_dir: Path, request: TestRequest
    ) -> PreparedEnvironment | TestResult:
        """The run's virtualenv, or the failed result that says why there is none."""
        assert request.environment is not None
        spec = request.environment
        if spec.image is not None:
            return image_environment(spec)
        refusal: list[SandboxUse] = []

        def run_step(step: list[str], venv: Path, seconds_left: float) -> GroupOutcome:
            argv, use = self._sandboxed(
                step, project, run_dir, request, network=True, writable=(venv,)
            )
            if argv is None:
                refusal.append(use)
                return GroupOutcome(None, False, 0.0, use.detail)
            return run_in_group(
                argv,
                cwd=project,
                env=setup_variables(os.environ, spec, venv, run_dir),
                log_path=run_dir / "setup.log",
                timeout=seconds_left,
                on_start=functools.partial(self._started, request.request_id),
                on_end=functools.partial(self._ended, request.request_id),
            )

        prepared = self.environments.prepare(spec, project, run_step)
        if prepared.python is not None:
            return prepared
        return TestResult(
            passed=False,
            command=prepared.step,
            output=trim_output(prepared.output),
            sandbox=refusal[0] if refusal else None,
            environment=prepared.use,
        )

    def _started(self, request_id: str | None, process: subprocess.Popen[bytes]) -> None:
        """Let a cancel reach the command; one that came before it started kills it now."""
        if request_id is None:
            return
        with self._lock:
            self._running[request_id] = process
            cancelled = request_id in self._cancelled
        if cancelled:
            kill_group(process)

    def _ended(self, request_id: str | None) -> None:
        if request_id is not None:
            with self._lock:
                self._running.pop(request_id, None)

    def _sandboxed(
        self,
        command: list[str],
        project: Path,
        run_dir: Path,
        request: TestRequest,
        *,
        network: bool | None = None,
        writable: tuple[Path, ...] = (),
    ) -> tuple[list[str] | None, SandboxUse]:
        """The argv that runs `command` as the request's sandbox mode has it; None: refused.
        `network` and `writable` widen it for making the tests' virtualenv."""
        network = request.network if network is None else network
        bwrap, use = sandbox_choice(request.sandbox, network, os.environ.get("PATH"))
        if use.refused:
            return None, use
        if bwrap is None:
            return command, use
        executable = command_executable(command, os.environ.get("PATH"))
        policy = SandboxPolicy(
            run_dir=run_dir,
            workdir=project,
            private_tmp=run_dir / "tmp",
            hidden=tester_hidden_paths(self.settings.scratch_dir),
            readable=tuple(interpreter_paths(executable)) if executable else (),
            network=network,
            writable=writable,
        )
        return bwrap_argv(bwrap, policy, command), use

    def _run_command(
        self, command: list[str], project: Path, run_dir: Path, request: TestRequest
    ) -> TestResult:
        argv, sandbox = self._sandboxed(command, project, run_dir, request)
        if argv is None:
            return TestResult(passed=False, command=command, output=sandbox.detail, sandbox=sandbox)
        junit_path = run_dir / "junit.xml"
        ran = run_in_group(
            argv,
            cwd=project,
            env=_test_environment(project, run_dir, junit_path, request, command),
            log_path=run_dir / "output.log",
            timeout=request.timeout_seconds,
            on_start=functools.partial(self._started, request.request_id),
            on_end=functools.partial(self._ended, request.request_id),
        )
        if ran.returncode is None:
            return TestResult(passed=False, command=command, output=ran.output, sandbox=sandbox)
        report = read_junit(junit_path)
        return TestResult(
            passed=ran.succeeded,
            command=command,
            tests_run=report.tests if report else 0,
            failures=report.failures if report else 0,
            errors=report.errors if report else 0,
            skipped=report.skipped if report else 0,
            executed=len(report.executed_ids) if report else 0,
            executed_digest=report.executed_digest if report else None,
            duration_seconds=round(ran.seconds, 3),
            timed_out=ran.timed_out,
            output=trim_output(ran.output),
            sandbox=sandbox,
        )
