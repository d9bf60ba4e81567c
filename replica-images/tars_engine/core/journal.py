"""The run's journal: its state, changed under one lock, saved and told to the observer.

Every change of a run goes through `RunJournal.commit`, so the state file and the
events (the CLI's progress, a SelfCodingRun's status) never tell different stories.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tars_api.run import FileOutcome, RunStage

from tars_engine.core import crash_points
from tars_engine.core.crash_points import Boundary
from tars_engine.core.events import EventCallback, EventKind, WorkflowEvent, one_line
from tars_engine.core.state import FileRecord, StateStore, WorkflowState, now
from tars_engine.core.workflow_errors import WorkflowError

EPHEMERAL_SAVE_INTERVAL_SECONDS = 1.0


class RunJournal:
    """One run's state; change it under `lock`, then `commit` the change."""

    def __init__(
        self,
        store: StateStore,
        on_event: EventCallback | None,
        tokens_used: Callable[[], int | None],
    ) -> None:
        self.lock = threading.RLock()
        self._store = store
        self._on_event = on_event
        self._tokens_used = tokens_used
        self._saved_at = 0.0
        self._event_lock = threading.Lock()
        self._state: WorkflowState | None = None

    def begin(self, state: WorkflowState) -> None:
        with self.lock:
            self._state = state

    def copy(self) -> WorkflowState:
        """A copy of the current state, safe to read from any thread."""
        with self.lock:
            if self._state is None:
                raise WorkflowError("the run has not started")
            return self._state.model_copy(deep=True)

    @property
    def state(self) -> WorkflowState:
        """The live state, for changes under `lock`."""
        assert self._state is not None
        return self._state

    def _refresh_statistics(self) -> None:
        state = self.state
        statistics = state.statistics
        statistics.files_total = len(state.files)
        statistics.files_processed = sum(1 for r in state.files if r.outcome is not None)
        statistics.files_failed = sum(
            1 for r in state.files if r.outcome in (FileOutcome.failed, FileOutcome.rejected)
        )
        statistics.improvements_applied = len(state.applied)
        statistics.improvements_accepted = len(state.accepted)
        tokens_used = self._tokens_used()
        if tokens_used is not None:
            statistics.tokens_used = max(statistics.tokens_used, tokens_used)

    def commit(
        self,
        kind: EventKind,
        *,
        path: str | None = None,
        message: str = "",
        durable: bool = True,
    ) -> None:
        """Persist the state, then tell the observer; every change goes through here.

        A change that is not `durable` (which file is current) is written at most once
        a second: on a large project, writing the whole state per file started would
        cost more than the work.
        """
        with self.lock:
            self._refresh_statistics()
            if durable or time.monotonic() - self._saved_at >= EPHEMERAL_SAVE_INTERVAL_SECONDS:
                self._store.save(self.state)
                self._saved_at = time.monotonic()
                crash_points.reached(Boundary.state_saved)
            state = self.state
            event = WorkflowEvent(
                kind=kind,
                phase=state.phase,
                stage=state.stage,
                current_file=state.current_file,
                files_done=state.statistics.files_processed,
                files_total=state.statistics.files_total,
                statistics=state.statistics.model_copy(),
                path=path,
                message=message,
            )
        if self._on_event is not None:
            with self._event_lock:
                self._on_event(event)

    def enter(self, stage: RunStage, message: str = "") -> None:
        with self.lock:
            if self.state.stage is stage:
                return
            self.state.stage = stage
        self.commit(EventKind.stage, message=message)

    def finish_file(self, record: FileRecord, outcome: FileOutcome, message: str) -> None:
        with self.lock:
            record.outcome = outcome
            record.message = one_line(message)
            record.finished_at = now()
            if self.state.current_file == record.path:
                self.state.current_file = None
        self.commit(EventKind.file_done, path=record.path, message=record.message)

    def set_current(self, path: str) -> None:
        with self.lock:
            self.state.current_file = path
        self.commit(EventKind.file, path=path, durable=False)
