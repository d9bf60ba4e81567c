"""The kubelet's log endpoint, so that `kubectl logs` (with -f and --tail) works: an HTTPS
server on the host address that serves each container's log file."""

from __future__ import annotations

import contextlib
import http.server
import logging
import re
import ssl
import subprocess
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.harness.podrunner.addresses import HOST_IP

log = logging.getLogger("podrunner")

LOG_PATH = re.compile(r"^/containerLogs/([^/]+)/([^/]+)/([^/]+)$")
FOLLOW_POLL_SECONDS = 0.5


class LogServer:
    """Serves GET /containerLogs/NAMESPACE/POD/CONTAINER over HTTPS on the host address.

    The API server proxies `kubectl logs` here (it connects to the node's InternalIP at
    daemonEndpoints.kubeletEndpoint.Port). Like a kubelet without client authentication
    it trusts whoever reaches it; it listens on 127.0.0.1 only. Supports `follow` and
    `tailLines`.
    """

    def __init__(
        self,
        find_log: Callable[[str, str, str], Path],
        is_running: Callable[[str, str], bool],
        directory: Path,
    ) -> None:
        self._find_log = find_log
        self._is_running = is_running
        self._directory = directory
        self._closing = threading.Event()
        self._server = http.server.ThreadingHTTPServer((HOST_IP, 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="podrunner-logs", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        certificate, key = self._directory / "serving.crt", self._directory / "serving.key"
        self._directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-days", "30", "-subj", "/CN=podrunner",
                "-addext", f"subjectAltName=IP:{HOST_IP}",
                "-keyout", str(key), "-out", str(certificate),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread.start()

    def stop(self) -> None:
        self._closing.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                match = LOG_PATH.match(url.path)
                if match is None:
                    self.send_error(404)
                    return
                namespace, pod, container = match.groups()
                try:
                    path = server._find_log(namespace, pod, container)
                except FileNotFoundError as error:
                    self.send_error(404, str(error))
                    return
                query = urllib.parse.parse_qs(url.query)
                tail = query.get("tailLines", [""])[0]
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                with contextlib.suppress(OSError), path.open("rb") as handle:
                    content = handle.read()
                    if tail.isdigit():
                        content = (
                            b"".join(content.splitlines(keepends=True)[-int(tail) :])
                            if int(tail)
                            else b""
                        )
                    self.wfile.write(content)
                    if query.get("follow", [""])[0] == "true":
                        server._follow(handle, self.wfile, namespace, pod)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("log server: " + format, *args)

        return Handler

    def _follow(self, handle: Any, out: Any, namespace: str, pod: str) -> None:
        while not self._closing.wait(FOLLOW_POLL_SECONDS):
            chunk = handle.read()
            if chunk:
                out.write(chunk)
                out.flush()
            elif not self._is_running(namespace, pod):
                return
