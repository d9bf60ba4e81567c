"""What a run tells its observers: its events, and the one-line form of every message it records.

The CLI shows the events and a SelfCodingRun's status mirrors them; a message
ends up in a terminal row or a status field, hence on one line.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict
from tars_api.run import RunPhase, RunStage, RunStatistics

MAX_MESSAGE_CHARS = 1024


class EventKind(enum.StrEnum):
    started = "started"
    stage = "stage"
    file = "file"
    file_done = "file-done"
    tested = "tested"
    finished = "finished"


class WorkflowEvent(BaseModel):
    """A change observers may show (the CLI) or mirror (a SelfCodingRun's status)."""

    model_config = ConfigDict(frozen=True)

    kind: EventKind
    phase: RunPhase
    stage: RunStage
    current_file: str | None
    files_done: int
    files_total: int
    statistics: RunStatistics
    path: str | None = None
    message: str = ""

    @property
    def progress(self) -> str:
        return f"{self.files_done}/{self.files_total}"


EventCallback = Callable[[WorkflowEvent], None]


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
