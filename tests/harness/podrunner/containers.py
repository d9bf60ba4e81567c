"""One container's process and what the kubelet knows about it (starts, exits, restarts,
probes, its status entry), stopping process groups with a grace period, and the
crash-loop backoff."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client

from tests.harness.podrunner.cluster import JsonDict
from tests.harness.podrunner.launch import LaunchSpec
from tests.harness.podrunner.probes import ProbeKind, ProbeState

# Crash-loop backoff as the kubelet does it since Kubernetes 1.33's reduced decay.
RESTART_BACKOFF_INITIAL = 1.0
RESTART_BACKOFF_MAX = 60.0
RESTART_BACKOFF_RESET_AFTER = 600.0

KILL_WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class Termination:
    exit_code: int
    reason: str
    started_at: str
    finished_at: str
    container_id: str

    def as_state(self) -> JsonDict:
        state: JsonDict = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }
        state["containerID"] = self.container_id
        return state


@dataclass
class ContainerRuntime:
    """One container's process and what the kubelet would know about it."""

    spec: client.V1Container
    init: bool
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    started_monotonic: float = 0.0
    restart_count: int = 0
    restarts_in_a_row: int = 0
    last_exit: Termination | None = None
    previous_exit: Termination | None = None
    done: bool = False
    next_start: float = 0.0
    first_waiting_reason: str = "ContainerCreating"
    waiting_reason: str = ""
    waiting_message: str = ""
    launch: LaunchSpec | None = None
    probes: list[ProbeState] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.spec.name)

    @property
    def container_id(self) -> str | None:
        return f"process://{self.process.pid}" if self.process else None

    def probe(self, kind: ProbeKind) -> ProbeState | None:
        return next((state for state in self.probes if state.kind == kind), None)

    @property
    def started(self) -> bool:
        startup = self.probe("startup")
        return self.process is not None and (startup is None or startup.passing)

    @property
    def ready(self) -> bool:
        readiness = self.probe("readiness")
        return self.started and (readiness is None or readiness.passing)

    def reset_probes(self, now: float) -> None:
        self.probes = []
        kinds: tuple[tuple[ProbeKind, client.V1Probe | None], ...] = (
            ("startup", self.spec.startup_probe),
            ("readiness", self.spec.readiness_probe),
            ("liveness", self.spec.liveness_probe),
        )
        for kind, probe in kinds:
            if probe is not None:
                self.probes.append(
                    ProbeState(
                        kind,
                        probe,
                        now + (probe.initial_delay_seconds or 0),
                        passing=kind == "liveness",
                    )
                )

    def status(self) -> JsonDict:
        state: JsonDict = {"waiting": None, "running": None, "terminated": None}
        last_state: JsonDict = {"waiting": None, "running": None, "terminated": None}
        if self.process is not None:
            state["running"] = {"startedAt": self.started_at}
        elif self.done and self.last_exit is not None:
            state["terminated"] = self.last_exit.as_state()
        else:
            waiting: JsonDict = {"reason": self.waiting_reason or self.first_waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state["waiting"] = waiting
        shown_last = self.previous_exit if self.done and self.process is None else self.last_exit
        if shown_last is not None:
            last_state["terminated"] = shown_last.as_state()
        return {
            "name": self.name,
            "image": self.spec.image or "",
            "imageID": f"podrunner://{self.spec.image or ''}",
            "containerID": self.container_id or (self.last_exit and self.last_exit.container_id),
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": last_state,
        }


def signal_group(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def stop_processes(processes: list[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM every process group, SIGKILL what is left after `grace`, reap everything."""
    for process in processes:
        if process.poll() is None:
            signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, deadline - time.monotonic()))
    for process in processes:
        # The group may outlive its leader (children of the container command).
        signal_group(process, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(KILL_WAIT_SECONDS)  # only a process stuck in the kernel outlasts this


def backoff_delay(attempt: int) -> float:
    return min(RESTART_BACKOFF_INITIAL * 2 ** max(0, attempt - 1), RESTART_BACKOFF_MAX)
