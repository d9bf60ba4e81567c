"""A real `ollama serve` for the tests: the pinned build and the small model `make ollama` makes.

TARS_OLLAMA_DIR (set by `make test`) names the directory `hack/build-ollama.sh` prints:
`bin/ollama` and `models/`. The server listens on a free loopback port, keeps its models
where the build put them, and is stopped (its whole process group) when the test is done.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.harness.controlplane import free_port

TEST_MODEL = os.environ.get("TARS_TEST_MODEL", "tars-gemma3-270m")
START_SECONDS = 60


class OllamaUnavailable(RuntimeError):
    """The build is missing or the server did not come up; the message says which."""


def missing_build(ollama_dir: Path) -> str | None:
    """Why `ollama_dir` cannot serve the test model, or None when it can."""
    if not os.access(ollama_dir / "bin" / "ollama", os.X_OK):
        return f"{ollama_dir} has no bin/ollama; run `make ollama`"
    manifests = ollama_dir / "models" / "manifests"
    if not any(manifests.rglob(TEST_MODEL)):
        return f"{ollama_dir}/models has no model {TEST_MODEL}; run `make ollama`"
    return None


@dataclass(frozen=True)
class OllamaServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """SIGKILL the server's process group (its model runners with it)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def start(ollama_dir: Path, log: Path, *, parallel: int = 1) -> OllamaServer:
    problem = missing_build(ollama_dir)
    if problem:
        raise OllamaUnavailable(problem)
    address = f"127.0.0.1:{free_port()}"
    environment = {
        **os.environ,
        "OLLAMA_MODELS": str(ollama_dir / "models"),
        "OLLAMA_NUM_PARALLEL": str(parallel),
        # One model at a time: the machine has two cores and the tests use one model.
        "OLLAMA_MAX_LOADED_MODELS": "1",
        "OLLAMA_NOPRUNE": "1",
    }
    return serve([str(ollama_dir / "bin" / "ollama"), "serve"], environment, address, log)


def serve(command: list[str], environment: dict[str, str], address: str, log: Path) -> OllamaServer:
    """Start `command` (an `ollama serve`) listening on `address`; return once it answers."""
    with log.open("ab") as output:
        process = subprocess.Popen(
            command,
            env={**environment, "OLLAMA_HOST": address},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = OllamaServer(url=f"http://{address}", process=process, log=log)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise OllamaUnavailable(f"ollama serve exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"{server.url}/api/version", timeout=2).is_success:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise OllamaUnavailable(f"ollama serve did not answer within {START_SECONDS}s; see {log}")


@contextmanager
def running(ollama_dir: Path, log: Path, *, parallel: int = 1) -> Iterator[OllamaServer]:
    server = start(ollama_dir, log, parallel=parallel)
    try:
        yield server
    finally:
        server.stop()
