"""Helpers for the operator tests: the `tars-operator` console script as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.harness import controlplane
from tests.harness.tools import stop_process

OPERATOR = Path(sys.executable).parent / "tars-operator"
# A bound on waits for the cluster and the operator to act: a broken one fails, never hangs.
SETTLE_SECONDS = 120
Kubectl = Callable[..., subprocess.CompletedProcess[str]]
T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = SETTLE_SECONDS) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what} (last seen: {last!r})")


def get_json(kubectl: Kubectl, *args: str) -> Any:
    """`kubectl get ... -o json`, or None when the object does not exist."""
    result = kubectl("get", *args, "-o", "json", check=False)
    if result.returncode != 0:
        if "NotFound" in result.stderr:
            return None
        raise AssertionError(f"kubectl get {' '.join(args)} failed: {result.stderr}")
    return json.loads(result.stdout)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class OperatorProcess:
    """One `tars-operator` subprocess watching one namespace; restartable after a kill."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        log_dir: Path,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log_dir = log_dir
        # On top of the test session's own environment (TARS_OPERATOR_* configure it).
        self.environment = dict(environment or {})
        self.liveness_port = controlplane.free_port()
        self.metrics_port = controlplane.free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def liveness_url(self) -> str:
        return f"http://127.0.0.1:{self.liveness_port}/healthz"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        command = [
            str(OPERATOR),
            f"--kubeconfig={self.kubeconfig}",
            f"--namespace={self.namespace}",
            f"--liveness-port={self.liveness_port}",
            f"--metrics-port={self.metrics_port}",
            "--bind-address=127.0.0.1",
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.environment},
            )
        wait_for(self._live, f"the operator's liveness endpoint (log: {self.log_path})")

    def _live(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"tars-operator exited with {self.process.returncode}:\n{self.log()}")
        try:
            return http_get(self.liveness_url)[0] == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=SETTLE_SECONDS)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def wait_until(fetch: Callable[[], T | None], predicate: Callable[[T], bool], what: str) -> T:
    """Poll `fetch` until it returns an object satisfying `predicate`; return that object."""

    seen: list[T | None] = [None]

    def probe() -> T | None:
        seen[0] = current = fetch()
        return current if current is not None and predicate(current) else None

    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what} (last seen: {seen[0]!r})")
