"""A real TCP server that accepts connections and never answers: a git server that hangs."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class SilentServer:
    port: int
    accepted: threading.Event = field(default_factory=threading.Event)
    """Set once a client has connected (and is now waiting for an answer)."""

    def git_url(self, repository: str = "project.git") -> str:
        return f"git://127.0.0.1:{self.port}/{repository}"


@contextlib.contextmanager
def silent_server() -> Iterator[SilentServer]:
    """Listen on a free loopback port; connections are held open, unread, until the end."""
    listener = socket.create_server(("127.0.0.1", 0))
    # Woken this often to see whether to end: closing does not interrupt a blocked accept.
    listener.settimeout(0.2)
    server = SilentServer(port=listener.getsockname()[1])
    held: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(connection)
            server.accepted.set()

    thread = threading.Thread(target=accept, name="silent-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stopping.set()
        thread.join()
        listener.close()
        for connection in held:
            connection.close()
