"""Budgets and stop requests: what a run may spend, and when it must end early.

The deadline counts from the start of each invocation: a run resumed after a stop
or a crash gets its full deadline again, since the time spent before it was
already accounted for by the invocation that spent it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class Budget(BaseModel):
    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True)

    max_files: int | None = Field(default=None, ge=1, description="files to work on; None: all")
    max_attempts_per_file: int = Field(default=2, ge=1, le=10)
    deadline_seconds: float | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, ge=1, description="model tokens (ollama engine)")


class StopRequested(Exception):
    """The run was asked to stop (stop file, stop callable) or ran out of budget.

    `failed` is set when the run missed its deadline: that ends it as failed, while
    a stop request or a spent token budget ends it as stopped. Both keep accepted work.
    """

    def __init__(self, reason: str, *, failed: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.failed = failed


class BudgetGuard:
    """Checks, between steps, whether the run may continue; thread-safe token accounting."""

    def __init__(
        self,
        budget: Budget,
        stop_file: Path,
        stop_requested: Callable[[], bool] | None = None,
    ) -> None:
        self.budget = budget
        self.stop_file = stop_file
        self._stop_requested = stop_requested
        self._deadline = (
            time.monotonic() + budget.deadline_seconds
            if budget.deadline_seconds is not None
            else None
        )
        self._lock = threading.Lock()
        self.tokens_used = 0

    def add_tokens(self, tokens: int) -> None:
        with self._lock:
            self.tokens_used += tokens

    def stop_reason(self) -> StopRequested | None:
        if self.stop_file.exists():
            return StopRequested(f"stop requested ({self.stop_file} exists)")
        if self._stop_requested is not None and self._stop_requested():
            return StopRequested("stop requested")
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return StopRequested(
                f"deadline of {self.budget.deadline_seconds:g}s reached", failed=True
            )
        if self.budget.max_tokens is not None and self.tokens_used >= self.budget.max_tokens:
            return StopRequested(f"token budget of {self.budget.max_tokens} spent")
        return None

    def check(self) -> None:
        stop = self.stop_reason()
        if stop is not None:
            raise stop
