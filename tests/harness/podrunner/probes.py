"""Container probes: the startup, readiness and liveness state the kubelet keeps for each
probe, and one HTTP, TCP or exec check against the pod's address."""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
from dataclasses import dataclass
from typing import Literal

from kubernetes import client

from tests.harness.podrunner.launch import LaunchSpec, resolve_executable, search_path

ProbeKind = Literal["startup", "readiness", "liveness"]


@dataclass
class ProbeState:
    kind: ProbeKind
    probe: client.V1Probe
    next_at: float
    passing: bool
    successes: int = 0
    failures: int = 0

    @property
    def period(self) -> float:
        return float(self.probe.period_seconds or 10)

    def record(self, ok: bool, now: float) -> None:
        self.next_at = now + self.period
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= (self.probe.success_threshold or 1):
                self.passing = True
        else:
            self.successes, self.failures = 0, self.failures + 1
            if self.failures >= (self.probe.failure_threshold or 3):
                self.passing = False


def named_port(container: client.V1Container, port: int | str) -> int:
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    for declared in container.ports or []:
        if declared.name == port:
            return int(declared.container_port)
    raise ValueError(f"container has no port named {port!r}")


def run_probe(
    probe: client.V1Probe, container: client.V1Container, pod_ip: str, launch: LaunchSpec
) -> bool:
    timeout = float(probe.timeout_seconds or 1)
    try:
        if probe.http_get is not None:
            action = probe.http_get
            host = action.host or pod_ip
            port = named_port(container, action.port)
            if (action.scheme or "HTTP").upper() == "HTTPS":
                # Like the kubelet, HTTPS probes do not verify the certificate.
                unverified = ssl.create_default_context()
                unverified.check_hostname = False
                unverified.verify_mode = ssl.CERT_NONE
                connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                    host, port, timeout=timeout, context=unverified
                )
            else:
                connection = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                headers = {header.name: header.value for header in action.http_headers or []}
                connection.request("GET", action.path or "/", headers=headers)
                return 200 <= connection.getresponse().status < 400
            finally:
                connection.close()
        if probe.tcp_socket is not None:
            port = named_port(container, probe.tcp_socket.port)
            with socket.create_connection((probe.tcp_socket.host or pod_ip, port), timeout=timeout):
                return True
        if probe.var_exec is not None:
            command = [launch.mounts.rewrite(word) for word in probe.var_exec.command or []]
            command[0] = resolve_executable(command[0], search_path(launch.env))
            result = subprocess.run(
                command,
                env=launch.env,
                cwd=launch.cwd,
                timeout=timeout,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            return result.returncode == 0
    except (OSError, ValueError, subprocess.TimeoutExpired, http.client.HTTPException):
        return False
    return False  # grpc probes are not supported: they never pass
