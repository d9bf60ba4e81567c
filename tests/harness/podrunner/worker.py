"""One pod bound to this node, run by its own thread: volumes prepared, init containers
then the others started in order, exits reaped and restarted by the restart policy,
probes run, and on deletion the processes stopped within the grace period and the pod
finalized."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.harness.podrunner.addresses import HOST_IP, AddressPool
from tests.harness.podrunner.cluster import (
    API_TIMEOUT_SECONDS,
    MAX_API_BACKOFF_SECONDS,
    ClusterAccess,
    PodView,
    now_rfc3339,
)
from tests.harness.podrunner.containers import (
    RESTART_BACKOFF_RESET_AFTER,
    ContainerRuntime,
    Termination,
    backoff_delay,
    signal_group,
    stop_processes,
)
from tests.harness.podrunner.environment import RETRYABLE_ERRORS, PodContext
from tests.harness.podrunner.launch import launch_spec
from tests.harness.podrunner.node import EventRecorder
from tests.harness.podrunner.probes import run_probe
from tests.harness.podrunner.status import PodStatusReporter
from tests.harness.podrunner.volumes import ServiceAccountToken, prepare_volumes

log = logging.getLogger("podrunner")

IDLE_WAKEUP_SECONDS = 10.0
STOP_GRACE_SECONDS = 5.0


class PodWorker:
    """Runs one pod bound to this node: prepares it, supervises its containers, reports status."""

    def __init__(
        self,
        pod: PodView,
        access: ClusterAccess,
        pool: AddressPool,
        state_dir: Path,
        events: EventRecorder,
        on_done: Callable[[str], None],
    ) -> None:
        self._pod = pod
        self._access = access
        self._events = events
        self._pool = pool
        self._on_done = on_done
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._runner_stopping = False
        self._vanished = False
        self.uid = pod.uid
        self.pod_ip = HOST_IP if pod.spec.host_network else pool.allocate(pod.status.pod_ip)
        self.directory = state_dir / "pods" / f"{pod.namespace}_{pod.name}_{self.uid}"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._context = PodContext(
            pod=pod, pod_ip=self.pod_ip, directory=self.directory, core=access.core
        )
        self._prepared = False
        self._prepare_retry_at = 0.0
        self._prepare_failures = 0
        self._token_volumes: set[str] = set()
        self._token: ServiceAccountToken | None = None
        self.containers = [
            ContainerRuntime(spec, init=True, log_path=self.directory / f"{spec.name}.log")
            for spec in pod.spec.init_containers or []
        ] + [
            ContainerRuntime(
                spec,
                init=False,
                log_path=self.directory / f"{spec.name}.log",
                first_waiting_reason=(
                    "PodInitializing" if pod.spec.init_containers else "ContainerCreating"
                ),
            )
            for spec in pod.spec.containers
        ]
        self._status = PodStatusReporter(access, self.uid, self.pod_ip)
        self._thread = threading.Thread(
            target=self._run, name=f"pod-{pod.namespace}/{pod.name}", daemon=True
        )

    # -- control from the runner --------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def update(self, pod: PodView) -> None:
        with self._lock:
            self._pod = pod
        self._wake.set()

    def vanish(self) -> None:
        """The pod object is gone (force-deleted): stop at once, nothing left to finalize."""
        self._vanished = True
        self._wake.set()

    def stop(self) -> None:
        self._runner_stopping = True
        self._wake.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def kill_remaining(self) -> None:
        for runtime in self.containers:
            if runtime.process is not None:
                signal_group(runtime.process, signal.SIGKILL)

    def pids(self) -> dict[str, int]:
        return {runtime.name: runtime.process.pid for runtime in self.containers if runtime.process}

    # -- the loop -------------------------------------------------------------------------------

    @property
    def _deleting(self) -> bool:
        with self._lock:
            return self._pod.meta.deletion_timestamp is not None

    def _run(self) -> None:
        try:
            while not (self._runner_stopping or self._vanished or self._deleting):
                self._step()
                self._report_safely()
                self._wake.wait(self._seconds_to_next_event())
                self._wake.clear()
            self._shutdown()
        except Exception:
            log.exception("pod %s failed", self.uid)
            stop_processes(self._processes(), 0)
        finally:
            if self.pod_ip != HOST_IP:
                self._pool.release(self.pod_ip)
            self._on_done(self.uid)

    def _processes(self) -> list[subprocess.Popen[bytes]]:
        return [runtime.process for runtime in self.containers if runtime.process is not None]

    def _shutdown(self) -> None:
        if self._vanished or self._runner_stopping:
            stop_processes(self._processes(), 0 if self._vanished else STOP_GRACE_SECONDS)
            return
        with self._lock:
            pod = self._pod
        grace = pod.meta.deletion_grace_period_seconds
        if grace is None:
            grace = pod.spec.termination_grace_period_seconds or 30
        for runtime in self.containers:
            if runtime.process is not None:
                self._events.record(pod, "Killing", f"Stopping container {runtime.name}")
        stop_processes(self._processes(), float(grace))
        log.info("pod %s/%s stopped, finalizing", pod.namespace, pod.name)
        attempt = 0
        while not self._runner_stopping:
            try:
                self._access.core.delete_namespaced_pod(
                    pod.name,
                    pod.namespace,
                    body=client.V1DeleteOptions(
                        grace_period_seconds=0, preconditions=client.V1Preconditions(uid=self.uid)
                    ),
                    _request_timeout=API_TIMEOUT_SECONDS,
                )
                return
            except ApiException as error:
                if error.status in (404, 409):
                    return  # gone already, or a new pod of that name
                log.warning("finalizing %s/%s failed: %s", pod.namespace, pod.name, error.reason)
            except urllib3.exceptions.HTTPError as error:
                log.warning("finalizing %s/%s failed: %s", pod.namespace, pod.name, error)
            attempt += 1
            self._wake.wait(min(MAX_API_BACKOFF_SECONDS, backoff_delay(attempt)))
            self._wake.clear()

    def _step(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._context.pod = self._pod
        if self._token is not None and now >= self._token.refresh_at:
            with contextlib.suppress(*RETRYABLE_ERRORS):
                self._token.refresh()
        if not self._prepared:
            if now < self._prepare_retry_at:
                return
            try:
                self._token_volumes, self._token = prepare_volumes(self._context, self._access)
                self._prepared = True
                for runtime in self.containers:
                    runtime.waiting_reason, runtime.waiting_message = "", ""
            except RETRYABLE_ERRORS as error:
                self._prepare_failures += 1
                self._prepare_retry_at = now + backoff_delay(self._prepare_failures)
                for runtime in self.containers:
                    runtime.waiting_reason, runtime.waiting_message = (
                        "CreateContainerConfigError",
                        str(error),
                    )
                return
        for runtime in self.containers:
            self._reap(runtime, now)
        self._start_due(now)
        for runtime in self.containers:
            self._probe(runtime, now)

    def _reap(self, runtime: ContainerRuntime, now: float) -> None:
        process = runtime.process
        if process is None or process.poll() is None:
            return
        signal_group(process, signal.SIGKILL)
        code = process.returncode
        exit_code = 128 - code if code < 0 else code
        reason = "Completed" if code == 0 else "Error"
        runtime.previous_exit = runtime.last_exit
        runtime.last_exit = Termination(
            exit_code, reason, runtime.started_at, now_rfc3339(), f"process://{process.pid}"
        )
        runtime.process = None
        self._after_exit(runtime, now, succeeded=code == 0)

    def _after_exit(self, runtime: ContainerRuntime, now: float, *, succeeded: bool) -> None:
        policy = self._pod.spec.restart_policy or "Always"
        if runtime.init:
            restart = not succeeded and policy != "Never"
        else:
            restart = policy == "Always" or (policy == "OnFailure" and not succeeded)
        if not restart:
            runtime.done = True
            return
        if now - runtime.started_monotonic >= RESTART_BACKOFF_RESET_AFTER:
            runtime.restarts_in_a_row = 0
        runtime.restarts_in_a_row += 1
        runtime.next_start = now + backoff_delay(runtime.restarts_in_a_row)
        runtime.waiting_reason, runtime.waiting_message = "CrashLoopBackOff", ""
        runtime.restart_count += 1
        self._events.record(
            self._pod, "BackOff", f"Back-off restarting container {runtime.name}", warning=True
        )

    def _start_due(self, now: float) -> None:
        for runtime in self.containers:
            if (
                runtime.init
                and runtime.done
                and runtime.last_exit
                and runtime.last_exit.exit_code != 0
            ):
                return  # a failed init container with restartPolicy Never fails the pod
            if runtime.init and not runtime.done:
                if runtime.process is None and now >= runtime.next_start:
                    self._launch(runtime, now)
                return  # init containers run one at a time, in order
        for runtime in self.containers:
            if (
                not runtime.init
                and runtime.process is None
                and not runtime.done
                and now >= runtime.next_start
            ):
                self._launch(runtime, now)

    def _launch(self, runtime: ContainerRuntime, now: float) -> None:
        try:
            launch = launch_spec(self._context, runtime.spec, self._token_volumes, self._token)
        except RETRYABLE_ERRORS as error:
            reason = (
                "RunContainerError"
                if isinstance(error, FileNotFoundError)
                else "CreateContainerConfigError"
            )
            self._retry_later(runtime, now, reason, str(error))
            return
        try:
            with runtime.log_path.open("ab") as log_file:
                runtime.process = subprocess.Popen(
                    launch.argv,
                    env=launch.env,
                    cwd=launch.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as error:
            self._retry_later(runtime, now, "RunContainerError", str(error))
            return
        runtime.launch = launch
        runtime.started_at = now_rfc3339()
        runtime.started_monotonic = now
        runtime.waiting_reason, runtime.waiting_message = "", ""
        runtime.reset_probes(now)
        process = runtime.process
        threading.Thread(target=self._wake_on_exit, args=(process,), daemon=True).start()
        log.info(
            "pod %s: started %s (pid %d) on %s", self.uid, runtime.name, process.pid, self.pod_ip
        )
        self._events.record(self._pod, "Started", f"Started container {runtime.name}")

    def _retry_later(
        self, runtime: ContainerRuntime, now: float, reason: str, message: str
    ) -> None:
        if (reason, message) != (runtime.waiting_reason, runtime.waiting_message):
            self._events.record(self._pod, "Failed", f"Error: {message}", warning=True)
        runtime.waiting_reason, runtime.waiting_message = reason, message
        runtime.restarts_in_a_row += 1
        runtime.next_start = now + backoff_delay(runtime.restarts_in_a_row)

    def _wake_on_exit(self, process: subprocess.Popen[bytes]) -> None:
        process.wait()
        self._wake.set()

    def _probe(self, runtime: ContainerRuntime, now: float) -> None:
        if runtime.process is None or runtime.launch is None:
            return
        startup = runtime.probe("startup")
        for state in runtime.probes:
            if now < state.next_at or (
                state.kind != "startup" and startup is not None and not startup.passing
            ):
                continue
            was_passing = state.passing
            state.record(
                run_probe(state.probe, runtime.spec, self.pod_ip, runtime.launch), time.monotonic()
            )
            if was_passing and not state.passing:
                message = f"{state.kind.capitalize()} probe of {runtime.name} failed"
                self._events.record(self._pod, "Unhealthy", message, warning=True)
            failed_for_good = state.kind == "liveness" and not state.passing
            failed_startup = state.kind == "startup" and state.failures >= (
                state.probe.failure_threshold or 3
            )
            if failed_for_good or failed_startup:
                message = f"Container {runtime.name} failed {state.kind} probe, will be restarted"
                self._events.record(self._pod, "Killing", message)
                stop_processes(
                    [runtime.process], float(self._pod.spec.termination_grace_period_seconds or 30)
                )
                self._reap(runtime, time.monotonic())
                return

    def _seconds_to_next_event(self) -> float:
        now = time.monotonic()
        due = [now + IDLE_WAKEUP_SECONDS]
        if not self._prepared:
            due.append(self._prepare_retry_at)
        if self._token is not None:
            due.append(self._token.refresh_at)
        for runtime in self.containers:
            if runtime.process is None and not runtime.done:
                due.append(runtime.next_start)
            if runtime.process is not None:
                due.extend(state.next_at for state in runtime.probes)
        return min(max(0.05, min(due) - now), IDLE_WAKEUP_SECONDS)

    def _report_safely(self) -> None:
        with self._lock:
            pod = self._pod
        self._status.report(pod, self.containers, self._prepared)
