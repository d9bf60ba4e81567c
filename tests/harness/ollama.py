"""A real `ollama serve` for the tests: the pinned build and the small model `make ollama` makes.

TARS_OLLAMA_DIR (set by `make test`) names the directory `hack/build-ollama.sh` prints:
`bin/ollama` and `models/`. The server listens on a free port of loopback (or of the
address it is given, such as the test node's, which pods reach), keeps its models where the
build put them, and is stopped (its whole process group) when the test is done.

No registry is reachable, so the chart's Ollama pod runs from `image_archive`: the same
build, with the shared libraries it links, as an image of its own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.harness.controlplane import free_port
from tests.harness.node import oci_archive

TEST_MODEL = os.environ.get("TARS_TEST_MODEL", "tars-gemma3-270m")
START_SECONDS = 60
LOOPBACK = "127.0.0.1"
IMAGE_REPOSITORY = "localhost/tars-ollama"
# Where the image keeps the server; the chart's command is `ollama serve`, found on PATH.
IMAGE_BINARY = "usr/bin/ollama"
# What `ollama --version` prints without a server to ask: "client version is 0.17.4".
CLIENT_VERSION = re.compile(r"client version is (\S+)")
# A library `ldd` names: "libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x...)", and the
# dynamic loader as "/lib64/ld-linux-x86-64.so.2 (0x...)".
LINKED_LIBRARY = re.compile(r"(/\S+) \(0x[0-9a-f]+\)")


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


def start(ollama_dir: Path, log: Path, *, parallel: int = 1, host: str = LOOPBACK) -> OllamaServer:
    problem = missing_build(ollama_dir)
    if problem:
        raise OllamaUnavailable(problem)
    address = f"{host}:{free_port()}"
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
def running(
    ollama_dir: Path, log: Path, *, parallel: int = 1, host: str = LOOPBACK
) -> Iterator[OllamaServer]:
    server = start(ollama_dir, log, parallel=parallel, host=host)
    try:
        yield server
    finally:
        server.stop()


def version(ollama_dir: Path) -> str:
    """The version of the build in OLLAMA_DIR, as the binary reports it."""
    reported = subprocess.run(
        [str(ollama_dir / "bin" / "ollama"), "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        # No server at this address: the binary prints only its own version.
        env={**os.environ, "OLLAMA_HOST": f"{LOOPBACK}:{free_port()}"},
    )
    found = CLIENT_VERSION.search(reported.stdout + reported.stderr)
    if found is None:
        raise OllamaUnavailable(f"ollama --version did not say its version: {reported.stderr}")
    return found.group(1)


def linked_libraries(binary: Path) -> list[Path]:
    """The shared libraries BINARY loads, the dynamic loader among them, as `ldd` finds them."""
    listed = subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [Path(match.group(1)) for match in LINKED_LIBRARY.finditer(listed)]


def image_archive(ollama_dir: Path, reference: str) -> bytes:
    """The pinned server as an OCI image REFERENCE: the binary and what it links, nothing else.

    Made from the build that the other tests run, so the chart's pod serves with that very server.
    """
    binary = ollama_dir / "bin" / "ollama"
    files = {IMAGE_BINARY: (binary.read_bytes(), 0o755)}
    for library in linked_libraries(binary):
        # read_bytes follows the loader's and the libraries' symlinks: each is a file in the image.
        files[str(library).lstrip("/")] = (library.read_bytes(), 0o755)
    return oci_archive(
        reference, files, {"Entrypoint": [f"/{IMAGE_BINARY}"], "Env": ["PATH=/usr/bin"]}
    )
