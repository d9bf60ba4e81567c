"""Budgets and stop requests: what a run may spend, and when it must end early.

The deadline counts from the start of each invocation: a run resumed after a stop
or a crash gets its full deadline again, since the time spent before it was
already accounted for by the invocation that spent it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# How often a role's call under way is checked for a stop; a stop cancels it on the role.
STOP_POLL_SECONDS = 0.25
T = TypeVar("T")


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


def call_until_stop(
    call: Callable[[], T], guard: BudgetGuard, cancel: Callable[[], None], *, name: str
) -> T:
    """`call()`'s answer; a stop (or the deadline) meanwhile calls `cancel` and raises.

    The call runs on a worker thread so that a stop is seen while a role is still busy
    (a test run, a model's answer); `cancel` tells the role, whose thread then ends.
    """
    waiter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)
    try:
        future = waiter.submit(call)
        while True:
            try:
                return future.result(timeout=STOP_POLL_SECONDS)
            except concurrent.futures.TimeoutError:
                stop = guard.stop_reason()
                if stop is not None:
                    with contextlib.suppress(Exception):
                        cancel()
                    raise stop from None
    finally:
        waiter.shutdown(wait=False)
