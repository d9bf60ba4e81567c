"""The run's persisted state: workflow-state.json in the run's state directory.

It is rewritten atomically (temporary file, then rename) after every step, so a
reader never sees half a file and a run killed at any moment resumes from the
last step it finished. Phases, stages, statistics and file outcomes are the
SelfCodingRun status types, so mirroring a run into its status is a copy.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from tars_api.run import (
    MAX_LATEST_RESULTS,
    SANDBOX_DETAIL_MAX_LENGTH,
    FileOutcome,
    FileResult,
    RunPhase,
    RunStage,
    RunStatistics,
    SelfCodingRunStatus,
    TestEnvironment,
)
from tars_api.vocabulary import (
    DEFAULT_MODEL,
    DEFAULT_TEST_TIMEOUT_SECONDS,
    EngineName,
    SandboxMode,
)

from tars_engine.core.budget import Budget
from tars_engine.core.models import (
    Candidate,
    DroppedRule,
    EnvironmentUse,
    EnvName,
    ModelCheck,
    SandboxUse,
    TestResult,
)
from tars_engine.core.selection import SkippedFile

STATE_FILENAME = "workflow-state.json"
STOP_FILENAME = "stop"
LOCK_FILENAME = "lock"
STATE_VERSION = 1


class StateModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class RunOptions(StateModel):
    """What a run was asked to do; a resumed run keeps its original options."""

    model_config = ConfigDict(frozen=True)

    targets: list[str] = Field(min_length=1, description="project-relative directories or files")
    auto_apply: bool = False
    engine: EngineName = EngineName.static
    model: str = DEFAULT_MODEL
    allow_unsafe_fixes: bool = False
    test_command: list[str] | None = None
    test_timeout_seconds: float = Field(default=DEFAULT_TEST_TIMEOUT_SECONDS, gt=0)
    budget: Budget = Field(default_factory=Budget)
    learning: bool = Field(
        default=True,
        description="use the learning store and record the run's outcomes in it; "
        "False: the run neither reads nor writes it",
    )
    batch_size: int = Field(default=32, ge=1, description="candidates tested together at most")
    sandbox: SandboxMode = SandboxMode.auto
    test_network: bool = Field(default=False, description="the tests may reach the network")
    test_env: list[EnvName] = Field(
        default_factory=list, description="variables passed on to the tests, by name"
    )
    test_environment: TestEnvironment | None = Field(
        default=None, description="the virtualenv the tester makes for the tests; None: its own"
    )
    baseline_first: bool = Field(
        default=False,
        description="test the untouched project first, alongside generation; otherwise "
        "after the first batch (every run tests it once: a pass proves only its tests)",
    )


class RuleGroup(StateModel):
    """Rules of one file to be fixed together in one candidate: one step of the static
    engine's bisection over a file's rules (`gating.next_rule_groups`)."""

    rules: list[str] | None = Field(default=None, description="None: every rule of the level")
    fails_after_a_pass: bool = Field(
        default=False,
        description="the group before it is its other half: when that one passes, this one "
        "is known to fail without testing it",
    )


class FileRecord(StateModel):
    path: str
    priority: float = 0
    outcome: FileOutcome | None = Field(default=None, description="None: still to be worked on")
    message: str = ""
    attempts: int = 0
    rules: list[str] = Field(default_factory=list)
    candidate_id: str | None = None
    commit: str | None = None
    finished_at: datetime.datetime | None = None
    unsafe_fixes: bool = Field(
        default=False,
        description="static engine: the file's safe fixes are settled, its unsafe ones are tried",
    )
    rule_groups: list[RuleGroup] = Field(
        default_factory=lambda: [RuleGroup()],
        description="static engine: the rule groups still to try at this level, the next first",
    )
    dropped_rules: list[DroppedRule] = Field(
        default_factory=list, description="rules left out of the file's changes, and why"
    )


class AppliedChange(StateModel):
    """An improvement written to the project: never applied twice, even across resumes."""

    candidate_id: str
    path: str
    diff_sha256: str
    commit: str | None = None


class WorkflowState(StateModel):
    version: int = STATE_VERSION
    run_id: str
    project_root: str
    options: RunOptions
    phase: RunPhase = RunPhase.pending
    stage: RunStage = RunStage.initializing
    current_file: str | None = None
    message: str = ""
    statistics: RunStatistics = Field(default_factory=RunStatistics)
    started_at: datetime.datetime
    updated_at: datetime.datetime
    completed_at: datetime.datetime | None = None
    baseline: TestResult | None = None
    sandbox: SandboxUse | None = Field(
        default=None, description="how the latest test run was isolated"
    )
    environment: EnvironmentUse | None = Field(
        default=None, description="the virtualenv the latest test run used"
    )
    model_check: ModelCheck | None = Field(
        default=None, description="the ollama engine's preflight of its model server"
    )
    files: list[FileRecord] = Field(default_factory=list, description="selected files, best first")
    skipped: list[SkippedFile] = Field(default_factory=list)
    accepted: list[Candidate] = Field(
        default_factory=list, description="candidates that passed their tests, in acceptance order"
    )
    applied: list[AppliedChange] = Field(default_factory=list)
    patch_path: str | None = None

    @property
    def progress(self) -> str:
        done = sum(1 for record in self.files if record.outcome is not None)
        return f"{done}/{len(self.files)}"

    def file(self, path: str) -> FileRecord:
        for record in self.files:
            if record.path == path:
                return record
        raise KeyError(path)

    def is_applied(self, candidate_id: str) -> bool:
        return any(change.candidate_id == candidate_id for change in self.applied)

    def run_status(self) -> SelfCodingRunStatus:
        """The SelfCodingRun status fields this state determines (conditions are the operator's)."""
        finished = sorted(
            (record for record in self.files if record.outcome is not None and record.finished_at),
            key=lambda record: record.finished_at or self.started_at,
        )
        return SelfCodingRunStatus(
            phase=self.phase,
            stage=self.stage,
            current_file=self.current_file,
            progress=self.progress,
            statistics=self.statistics.model_copy(),
            sandbox=self.sandbox.detail[:SANDBOX_DETAIL_MAX_LENGTH] if self.sandbox else None,
            test_environment=(
                self.environment.detail[:SANDBOX_DETAIL_MAX_LENGTH] if self.environment else None
            ),
            start_time=self.started_at.replace(microsecond=0),
            completion_time=self.completed_at.replace(microsecond=0) if self.completed_at else None,
            latest_results=[
                FileResult(
                    path=record.path,
                    outcome=record.outcome,
                    message=record.message[:1024],
                    attempts=record.attempts,
                    commit=record.commit,
                )
                for record in finished[-MAX_LATEST_RESULTS:]
                if record.outcome is not None
            ],
        )


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class StateError(RuntimeError):
    """The state directory cannot be used (unreadable state, a run already in progress)."""


class StateStore:
    """The run's state directory: state file, stop file, lock and patch."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILENAME

    @property
    def stop_file(self) -> Path:
        return self.state_dir / STOP_FILENAME

    def load(self) -> WorkflowState | None:
        try:
            raw = self.state_file.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {self.state_file}: {exc.strerror}") from exc
        return parse_state(self.state_file, raw)

    def save(self, state: WorkflowState) -> None:
        state.updated_at = now()
        write_atomically(self.state_file, state.model_dump_json(by_alias=True, indent=2).encode())

    def request_stop(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.stop_file.touch()

    def clear_stop(self) -> None:
        self.stop_file.unlink(missing_ok=True)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the run lock: one workflow per state directory; released if the process dies."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / LOCK_FILENAME, "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise StateError(f"another run is using {self.state_dir}") from exc
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def parse_state(origin: Path, raw: bytes) -> WorkflowState:
    """The workflow state in `raw` (read from `origin`), or a StateError in one line that says
    what is wrong with it and what to do."""
    start_afresh = "move it away to start afresh"
    try:
        document = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise StateError(
            f"{origin} is not a workflow state: byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start} is not UTF-8 text; {start_afresh}"
        ) from exc
    except json.JSONDecodeError as exc:
        raise StateError(
            f"{origin} is not a workflow state: not JSON (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg}); {start_afresh}"
        ) from exc
    version = document.get("version") if isinstance(document, dict) else None
    if isinstance(version, int) and version > STATE_VERSION:
        raise StateError(
            f"{origin} was written by a newer TARS (state version {version}; this one reads "
            f"version {STATE_VERSION}); use that version, or {start_afresh}"
        )
    try:
        return WorkflowState.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the document"
        raise StateError(
            f"{origin} is not a workflow state this version understands ({where}: {first['msg']}"
            f"{f', and {exc.error_count() - 1} more problems' if exc.error_count() > 1 else ''}); "
            f"{start_afresh}"
        ) from exc


def write_atomically(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace `path` with `data` in one rename: readers see the old or the new bytes, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        # No fsync: the rename is atomic against a process dying at any moment, which is
        # what resuming relies on; paying a disk flush per step would slow every run.
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
