"""A command in its own process group, its output in a file, killed whole at its deadline.

Output goes to a file, not a pipe: a leftover grandchild cannot hold the reader. The group
is killed at the deadline and again when the command ends, so nothing it started in the
background outlives it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GroupOutcome:
    """How one command ended."""

    returncode: int | None
    """None: it could not be started (`output` says why)."""
    timed_out: bool
    seconds: float
    output: str

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_in_group(
    argv: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    timeout: float,
    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
    on_end: Callable[[], None] | None = None,
) -> GroupOutcome:
    """Run `argv` to its end or its deadline; `on_start`/`on_end` let a caller cancel it."""
    started = time.monotonic()
    timed_out = False
    with log_path.open("wb") as log:
        try:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            return GroupOutcome(None, False, 0.0, f"cannot run {argv[0]}: {exc}")
        if on_start is not None:
            on_start(process)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(process)
            returncode = process.wait()
        finally:
            kill_group(process)
            if on_end is not None:
                on_end()
    output = log_path.read_bytes().decode("utf-8", errors="replace")
    if timed_out:
        output += f"\n[timed out after {timeout:g}s; the process group was killed]"
    return GroupOutcome(returncode, timed_out, time.monotonic() - started, output)
