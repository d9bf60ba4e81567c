"""Step boundaries: the points between a run's steps where dying must lose nothing.

A run may die at any moment, and the next run must then lose none of the user's work,
apply no improvement twice and leave no file changed without its commit. The
fault-injection test proves it at each boundary in turn: it names one in the test-only
environment variable ReplicaEnv.kill_at (`N:SIGNAL`, e.g. `7:SIGKILL`), and the process
sends itself SIGNAL when it reaches its Nth boundary. The hook exists because the
boundaries inside applying (a file written, its commit not yet made) leave no trace an
outside observer could wait for without racing the process; unset, as everywhere but
in that test, `reached` does nothing.
"""

from __future__ import annotations

import enum
import functools
import os
import signal
import sys
import threading

from tars_api.names import ReplicaEnv

from tars_engine.core.workflow_errors import WorkflowError


class Boundary(enum.StrEnum):
    state_saved = "state-saved"
    before_write = "before-write"
    after_write = "after-write"
    after_commit = "after-commit"
    patch_written = "patch-written"


class KillPointError(WorkflowError):
    """ReplicaEnv.kill_at is set but is not `N:SIGNAL`."""


@functools.cache
def kill_point() -> tuple[int, signal.Signals] | None:
    """The boundary and signal ReplicaEnv.kill_at names; a run checks it before it starts."""
    value = os.environ.get(ReplicaEnv.kill_at)
    if not value:
        return None
    ordinal, _, name = value.partition(":")
    try:
        point = int(ordinal), signal.Signals[name]
    except (ValueError, KeyError) as exc:
        raise KillPointError(
            f"{ReplicaEnv.kill_at}={value!r} is not N:SIGNAL (e.g. 7:SIGKILL)"
        ) from exc
    if point[0] < 1:
        raise KillPointError(f"{ReplicaEnv.kill_at}={value!r}: N counts from 1")
    return point


_lock = threading.Lock()
_reached = 0


def reached(boundary: Boundary) -> None:
    """The run is at a step boundary; at the one ReplicaEnv.kill_at names, it signals itself."""
    global _reached
    point = kill_point()
    if point is None:
        return
    with _lock:
        _reached += 1
        if _reached != point[0]:
            return
    ordinal, signum = point
    sys.stderr.write(
        f"{ReplicaEnv.kill_at}: {signum.name} at step boundary {ordinal} ({boundary})\n"
    )
    sys.stderr.flush()
    os.kill(os.getpid(), signum)
