"""A local HTTP server speaking Ollama's API with recorded responses (the Ollama network edge).

It serves /api/version, /api/tags and /api/chat on 127.0.0.1, records every chat
request it receives, and answers chats from a queue of replies. A reply can also
stall (to exercise client timeouts) or fail with an HTTP status.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VERSION = "0.12.6"
MODELS = ("llama3:latest", "qwen2.5-coder:7b")


@dataclass
class ChatReply:
    content: str = ""
    prompt_eval_count: int = 812
    eval_count: int = 240
    done_reason: str = "stop"
    stall_seconds: float = 0.0
    status: int = 200
    error: str = ""


@dataclass
class FakeOllama:
    url: str
    replies: deque[ChatReply] = field(default_factory=deque)
    chats: list[dict[str, Any]] = field(default_factory=list)

    def reply(self, content: str = "", **fields: Any) -> None:
        self.replies.append(ChatReply(content=content, **fields))


def _chat_body(model: str, reply: ChatReply) -> dict[str, Any]:
    # The shape of a recorded non-streaming /api/chat answer.
    return {
        "model": model,
        "created_at": "2026-11-26T10:00:00.000000Z",
        "message": {"role": "assistant", "content": reply.content},
        "done": True,
        "done_reason": reply.done_reason,
        "total_duration": 5_123_456_789,
        "load_duration": 12_345_678,
        "prompt_eval_count": reply.prompt_eval_count,
        "prompt_eval_duration": 1_234_567_890,
        "eval_count": reply.eval_count,
        "eval_duration": 3_456_789_012,
    }


def _handler(fake: FakeOllama) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tests assert on recorded requests instead."""

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_GET(self) -> None:
            if self.path == "/api/version":
                self._send(200, {"version": VERSION})
            elif self.path == "/api/tags":
                models = [
                    {
                        "name": name,
                        "model": name,
                        "modified_at": "2026-11-20T08:00:00Z",
                        "size": 4_661_224_676,
                        "digest": "365c0bd3c000a25d28ddbf732fe1c6add414de7275464c4e4d1c3b5fcb5d8ad1",
                        "details": {"format": "gguf", "family": "llama", "parameter_size": "8.0B"},
                    }
                    for name in MODELS
                ]
                self._send(200, {"models": models})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path != "/api/chat":
                self._send(404, {"error": "not found"})
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.chats.append(body)
            if body.get("model") not in MODELS and f"{body.get('model')}:latest" not in MODELS:
                self._send(404, {"error": f"model '{body.get('model')}' not found"})
                return
            reply = fake.replies.popleft() if fake.replies else ChatReply(content="")
            if reply.stall_seconds:
                time.sleep(reply.stall_seconds)
            if reply.status != 200:
                self._send(reply.status, {"error": reply.error or "server error"})
                return
            self._send(200, _chat_body(body["model"], reply))

    return Handler


@contextmanager
def fake_ollama() -> Iterator[FakeOllama]:
    fake = FakeOllama(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
