"""A server answering only Ollama's /api/version and /api/show, with a context length of our choice.

Used for one fault alone: a model whose context is too small. The only model this
machine can have (Gemma 3 270M, 32k context) cannot be made to report a smaller
trained context, so a real server cannot produce it. Everything else the tests ask of
Ollama goes to the real server (`tests.harness.ollama`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _handler(context_length: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send({"version": "0.17.4"})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._send({"model_info": {"gemma3.context_length": context_length}})

    return Handler


@contextmanager
def small_context_ollama(context_length: int) -> Iterator[str]:
    """The URL of a server whose every model has `context_length` tokens of context."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(context_length))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
