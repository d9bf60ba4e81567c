"""Talking to one Ollama server the way its documentation advises.

- A preflight before any work: the server answers, the model is there, and its context
  length (from `/api/show`) is large enough; a short probe measures its speed.
- One `num_ctx` for the whole run (Ollama reloads a model whenever it changes), with
  `keep_alive` so the model stays loaded between requests.
- Answers are streamed. Each request has a deadline derived from its prompt, its
  `num_predict` and the measured speed, so a slow server is told apart from one that
  cannot be reached; closing the stream (a deadline, or a stop) cancels the generation
  on the server.
- At most `parallel` requests at once, matching the server's OLLAMA_NUM_PARALLEL.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

# Code tokenizes denser than prose: three characters per token errs on the large side.
CHARS_PER_TOKEN = 3
# Below this a focused task (a function, its findings, the answer) does not fit.
MIN_CONTEXT = 4096
PROBE_PROMPT = "Reply with the word ok."
PROBE_TOKENS = 16
# Answers that must follow a schema come slower than free text: the probe uses one too.
PROBE_FORMAT = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 40}},
    "required": ["answer"],
}
SEED = 42
# A little variety between tasks; with the fixed seed the same task still gets one answer.
TEMPERATURE = 0.2
# A deadline is this many times the expected time, plus a fixed allowance for loading.
DEADLINE_SLACK = 2.0
DEADLINE_ALLOWANCE_SECONDS = 20.0
# How soon a stop or a passed deadline ends the wait for an answer.
ANSWER_POLL_SECONDS = 0.1


class OllamaError(RuntimeError):
    """Ollama could not give an answer; the message is one line naming what to do."""


class OllamaUnreachable(OllamaError):
    pass


class ModelMissing(OllamaError):
    pass


class ContextTooSmall(OllamaError):
    pass


class AnswerTimedOut(OllamaError):
    pass


class AnswerCancelled(OllamaError):
    pass


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class ModelProfile:
    """What the preflight learnt: the run uses `num_ctx` for every request."""

    model: str
    version: str
    context_length: int
    num_ctx: int
    prompt_tokens_per_second: float
    tokens_per_second: float

    def deadline_seconds(self, prompt_tokens: int, num_predict: int) -> float:
        expected = prompt_tokens / self.prompt_tokens_per_second + (
            num_predict / self.tokens_per_second
        )
        return DEADLINE_ALLOWANCE_SECONDS + DEADLINE_SLACK * expected


@dataclass(frozen=True)
class ChatAnswer:
    text: str
    done_reason: str
    prompt_tokens: int
    output_tokens: int
    seconds: float
    server_seconds: float
    """Ollama's own time for the answer (`total_duration`); the rest of `seconds` is
    the client's and the connection's."""

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    @property
    def cut_off(self) -> bool:
        return self.done_reason == "length"


def _context_length(show: Mapping[str, Any]) -> int | None:
    """The model's trained context length, `<architecture>.context_length` in model_info."""
    info = show.get("model_info") or {}
    lengths = [value for key, value in info.items() if key.endswith(".context_length")]
    return int(lengths[0]) if lengths else None


class OllamaClient:
    def __init__(
        self,
        host: str,
        *,
        connect_timeout: float = 5.0,
        keep_alive: str = "10m",
        parallel: int = 1,
    ) -> None:
        self.host = host
        self.keep_alive = keep_alive
        self._connect_timeout = connect_timeout
        self._slots = threading.BoundedSemaphore(max(1, parallel))

    def _unreachable(self, error: Exception) -> OllamaUnreachable:
        return OllamaUnreachable(
            f"no Ollama server answers at {self.host} ({error or type(error).__name__}): "
            "start `ollama serve` or point OLLAMA_HOST at one"
        )

    def _post(self, path: str, body: Mapping[str, Any], timeout: float) -> httpx.Response:
        try:
            return httpx.post(
                f"{self.host}{path}",
                json=dict(body),
                timeout=httpx.Timeout(timeout, connect=self._connect_timeout),
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    def version(self) -> str:
        try:
            answer = httpx.get(f"{self.host}/api/version", timeout=self._connect_timeout)
            answer.raise_for_status()
            return str(answer.json().get("version", "unknown"))
        except (httpx.HTTPError, ValueError) as exc:
            raise self._unreachable(exc) from exc

    def context_length(self, model: str) -> int:
        answer = self._post("/api/show", {"model": model}, timeout=30)
        if answer.status_code == 404:
            raise ModelMissing(
                f"model {model} is not on the Ollama server at {self.host}: "
                f"run `ollama pull {model}` (or `ollama create`), or choose another with --model"
            )
        if not answer.is_success:
            raise OllamaError(f"Ollama at {self.host} refused /api/show: {answer.text[:200]}")
        length = _context_length(answer.json())
        if length is None:
            raise OllamaError(f"Ollama at {self.host} does not say model {model}'s context length")
        return length

    def check_model(self, model: str) -> tuple[str, int]:
        """(server version, the model's context) when the model can serve a run; else raises."""
        version = self.version()
        length = self.context_length(model)
        if length < MIN_CONTEXT:
            raise ContextTooSmall(
                f"model {model} has a context of {length} tokens; TARS needs at least "
                f"{MIN_CONTEXT}: choose a larger model with --model"
            )
        return version, length

    def preflight(
        self, model: str, *, wanted_context: int, cancel: threading.Event | None = None
    ) -> ModelProfile:
        """Check server and model before any work; measure speed with one short probe."""
        version, length = self.check_model(model)
        num_ctx = min(length, max(wanted_context, MIN_CONTEXT))
        probe = self._stream(
            model,
            [{"role": "user", "content": PROBE_PROMPT}],
            options={"num_ctx": num_ctx, "num_predict": PROBE_TOKENS, "temperature": 0},
            # Loading the model is most of the probe's time; a minute covers a slow disk.
            deadline_seconds=120,
            cancel=cancel,
            response_format=PROBE_FORMAT,
        )
        return ModelProfile(
            model=model,
            version=version,
            context_length=length,
            num_ctx=num_ctx,
            prompt_tokens_per_second=probe.prompt_rate,
            tokens_per_second=probe.output_rate,
        )

    def chat(
        self,
        profile: ModelProfile,
        messages: list[dict[str, str]],
        *,
        num_predict: int,
        response_format: Mapping[str, Any] | None = None,
        cancel: threading.Event | None = None,
    ) -> ChatAnswer:
        """One streamed answer within its deadline; raises OllamaError saying why not."""
        prompt_tokens = sum(estimate_tokens(message["content"]) for message in messages)
        deadline = profile.deadline_seconds(prompt_tokens, num_predict)
        with self._slots:
            streamed = self._stream(
                profile.model,
                messages,
                options={
                    "num_ctx": profile.num_ctx,
                    "num_predict": num_predict,
                    "temperature": TEMPERATURE,
                    # The same question gets the same answer: runs can be reproduced.
                    "seed": SEED,
                },
                deadline_seconds=deadline,
                cancel=cancel,
                response_format=response_format,
            )
        return streamed.answer

    def _stream(
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        options: Mapping[str, Any],
        deadline_seconds: float,
        cancel: threading.Event | None,
        response_format: Mapping[str, Any] | None = None,
    ) -> _Streamed:
        """Read the answer on a worker thread, so a stop or the deadline returns at once.

        Closing the stream is what tells Ollama to stop generating; a read blocked in the
        worker (the model still reading a long prompt) may notice only later, and the
        worker then ends on its own.
        """
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "stream": True,
            "options": dict(options),
            "keep_alive": self.keep_alive,
        }
        if response_format is not None:
            body["format"] = dict(response_format)
        streamed = _Streamed(started=time.monotonic())
        finished = threading.Event()
        connection = _Connection()
        failures: list[BaseException] = []
        timeout = httpx.Timeout(deadline_seconds, connect=self._connect_timeout)

        def read() -> None:
            try:
                with (
                    httpx.Client(timeout=timeout) as client,
                    client.stream(
                        "POST",
                        f"{self.host}/api/chat",
                        json=body,
                        extensions={"trace": connection.trace},
                    ) as reply,
                ):
                    self._read(reply, streamed, model)
            except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
                failures.append(exc)
            finally:
                finished.set()

        threading.Thread(target=read, name="tars-ollama-answer", daemon=True).start()
        ends = streamed.started + deadline_seconds
        while not finished.wait(ANSWER_POLL_SECONDS):
            stopped = cancel is not None and cancel.is_set()
            if stopped or time.monotonic() >= ends:
                connection.hang_up()
                if stopped:
                    raise AnswerCancelled("stopped while the model was answering")
                raise self._timed_out(streamed, deadline_seconds)
        if failures:
            failure = failures[0]
            if isinstance(failure, OllamaError):
                raise failure
            if isinstance(failure, httpx.TimeoutException):
                raise self._timed_out(streamed, deadline_seconds) from failure
            if isinstance(failure, httpx.TransportError):
                raise self._unreachable(failure) from failure
            if isinstance(failure, ValueError):
                raise OllamaError(
                    f"Ollama at {self.host} sent something that is not JSON"
                ) from failure
            raise failure
        if streamed.done_reason is None:
            raise OllamaError(f"Ollama at {self.host} ended the answer without finishing it")
        return streamed

    def _read(self, reply: httpx.Response, streamed: _Streamed, model: str) -> None:
        if reply.status_code == 404:
            raise ModelMissing(f"model {model} is not on the Ollama server at {self.host}")
        if not reply.is_success:
            reply.read()
            raise OllamaError(f"Ollama at {self.host} refused: {reply.text[:200]}")
        for line in reply.iter_lines():
            if not line.strip():
                continue
            chunk = json.loads(line)
            if "error" in chunk:
                raise OllamaError(f"Ollama at {self.host}: {chunk['error']}")
            streamed.add(chunk)

    def _timed_out(self, streamed: _Streamed, deadline_seconds: float) -> AnswerTimedOut:
        elapsed = time.monotonic() - streamed.started
        rate = streamed.chunks / elapsed if elapsed > 0 else 0.0
        return AnswerTimedOut(
            f"Ollama at {self.host} timed out after {elapsed:.0f} s at {rate:.1f} tokens/s "
            f"(deadline {deadline_seconds:.0f} s): the server is slow, not unreachable"
        )


class _Connection:
    """The request's socket, caught as it connects, so that another thread can hang up.

    Ollama sends no headers until the model has read the prompt, so the response (and
    the socket httpx keeps behind it) is not there yet when a stop comes early; httpcore's
    trace hands over the socket as soon as it is connected. Closing it from another
    thread would not wake the blocked read; shutting it down does, and Ollama stops
    generating once it sees its client leave.
    """

    def __init__(self) -> None:
        self._sockets: list[socket.socket] = []

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                self._sockets.append(sock)

    def hang_up(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@dataclass
class _Streamed:
    """An answer as its chunks arrive; the last chunk carries Ollama's counts."""

    started: float
    text: str = ""
    chunks: int = 0
    done_reason: str | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    prompt_seconds: float = 0.0
    output_seconds: float = 0.0
    server_seconds: float = 0.0

    def add(self, chunk: Mapping[str, Any]) -> None:
        self.text += (chunk.get("message") or {}).get("content") or ""
        self.chunks += 1
        if chunk.get("done"):
            self.done_reason = str(chunk.get("done_reason") or "stop")
            self.prompt_tokens = int(chunk.get("prompt_eval_count") or 0)
            self.output_tokens = int(chunk.get("eval_count") or 0)
            self.prompt_seconds = int(chunk.get("prompt_eval_duration") or 0) / 1e9
            self.output_seconds = int(chunk.get("eval_duration") or 0) / 1e9
            self.server_seconds = int(chunk.get("total_duration") or 0) / 1e9

    @property
    def prompt_rate(self) -> float:
        # A cached prompt reports no evaluation time; assume a modest CPU's speed then.
        if self.prompt_seconds <= 0 or self.prompt_tokens == 0:
            return 100.0
        return self.prompt_tokens / self.prompt_seconds

    @property
    def output_rate(self) -> float:
        if self.output_seconds <= 0 or self.output_tokens == 0:
            return 10.0
        return self.output_tokens / self.output_seconds

    @property
    def answer(self) -> ChatAnswer:
        return ChatAnswer(
            text=self.text,
            done_reason=self.done_reason or "stop",
            prompt_tokens=self.prompt_tokens,
            output_tokens=self.output_tokens,
            seconds=time.monotonic() - self.started,
            server_seconds=self.server_seconds,
        )
