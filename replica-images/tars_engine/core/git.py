"""Every git command the engine runs, run one way.

Each call has a timeout, after which git and whatever it started (ssh, a remote helper)
are killed; a stop request kills them the same way. Git may reach remotes only over the
allowed transports, said twice: in `protocol.allow` and in GIT_ALLOW_PROTOCOL, which also
binds the processes git starts. Commits are never signed (no key, no agent, no prompt),
git never asks a question on a terminal, and a failure is one GitError whose message is
git's own with the secrets it was given taken out.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections.abc import Collection
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

# Transports git may use to reach a remote; `file` only when a run allows it.
ALLOWED_PROTOCOLS = ("https", "ssh", "git")
FILE_PROTOCOL = "file"
DEFAULT_TIMEOUT_SECONDS = 120.0
# How often a running git is checked for a stop request.
STOP_POLL_SECONDS = 0.2
MAX_ERROR_CHARS = 400
# `<scheme>://`: what git calls a URL; the scheme names the transport.
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Schemes git treats as ssh.
_SSH_SCHEMES = frozenset({"ssh", "git+ssh", "ssh+git"})
_USERINFO = re.compile(r"://[^/@\s]+@")


class GitError(RuntimeError):
    """A git command failed, timed out or was stopped; the message is one line."""


class GitInterrupted(GitError):
    """A git command was killed before it finished: retrying another way would not help."""


class GitTimedOut(GitInterrupted):
    """A git command ran past its timeout and was killed."""


class GitStopped(GitInterrupted):
    """A git command was killed because its run was asked to stop."""


class GitOptions(BaseModel):
    """How one git command runs: its environment, its limits, what its messages must hide."""

    model_config = ConfigDict(frozen=True)

    env: dict[str, str] = Field(default_factory=dict, repr=False)
    """Variables added to the process environment (identity, askpass, ssh command)."""
    secrets: tuple[str, ...] = Field(default=(), repr=False)
    """Values never shown in an error message."""
    allow_file: bool = False
    """Also allow the `file` transport (a repository on this machine's filesystem)."""
    timeout_seconds: float = Field(default=DEFAULT_TIMEOUT_SECONDS, gt=0)


def allowed_protocols(*, allow_file: bool) -> tuple[str, ...]:
    return (*ALLOWED_PROTOCOLS, FILE_PROTOCOL) if allow_file else ALLOWED_PROTOCOLS


def refused_url_reason(url: str, *, allow_file: bool) -> str | None:
    """Why git must not be pointed at `url`, or None when its transport is allowed."""
    allowed = allowed_protocols(allow_file=allow_file)
    scheme = _URL_SCHEME.match(url)
    if scheme is not None:
        # As git does: case-sensitively (to git, `FILE://` names a remote helper).
        transport = scheme.group(1)
        transport = "ssh" if transport in _SSH_SCHEMES else transport
        if transport in allowed:
            return None
        if transport == FILE_PROTOCOL:
            return "file:// URLs are allowed only when the git source sets allowFileProtocol"
        return f"transport {transport!r} is not one of {', '.join(allowed)}"
    helper, separator, _ = url.partition("::")
    if separator and "/" not in helper:
        return f"remote helper {helper + '::'!r} URLs are not allowed"
    before_slash = url.split("/", 1)[0]
    if ":" in before_slash and "ssh" in allowed:
        return None  # scp-like `[user@]host:path`: ssh
    return "a plain path is not a repository URL (use https://, ssh://, git:// or host:path)"


def _protocol_config(allow_file: bool) -> list[str]:
    configured = ["-c", "protocol.allow=never"]
    for protocol in allowed_protocols(allow_file=allow_file):
        configured += ["-c", f"protocol.{protocol}.allow=always"]
    return configured


def _environment(options: GitOptions) -> dict[str, str]:
    return {
        **os.environ,
        **options.env,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": ":".join(allowed_protocols(allow_file=options.allow_file)),
    }


def scrub(text: str, secrets: Collection[str]) -> str:
    """Git's message on one line, without the secrets it might echo."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _USERINFO.sub("://***@", text)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines)[-MAX_ERROR_CHARS:] or "no output"


class GitResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    returncode: int
    output: bytes
    """Exactly what git wrote: file contents keep their line endings."""
    stderr: str
    """Scrubbed of the call's secrets."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def stdout(self) -> str:
        return self.output.decode("utf-8", "surrogateescape")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.communicate()


def _communicate(
    process: subprocess.Popen[bytes], subcommand: str, timeout: float, stop: threading.Event | None
) -> tuple[bytes, bytes]:
    """Wait for git's output; kill its process group past `timeout` or once `stop` is set."""
    remaining = timeout
    while True:
        wait = remaining if stop is None else min(remaining, STOP_POLL_SECONDS)
        try:
            return process.communicate(timeout=wait)
        except subprocess.TimeoutExpired:
            remaining -= wait
        if stop is not None and stop.is_set():
            _kill_group(process)
            raise GitStopped(f"git {subcommand} was stopped: the run was asked to stop")
        if remaining <= 0:
            _kill_group(process)
            raise GitTimedOut(f"git {subcommand} timed out after {timeout:g}s")


def run_git(
    root: Path,
    *arguments: str,
    options: GitOptions | None = None,
    stop: threading.Event | None = None,
) -> GitResult:
    """`git -C root ARGUMENTS`, whatever its exit code; GitError only when it could not finish."""
    options = options or GitOptions()
    subcommand = arguments[0] if arguments else "git"
    command = [
        "git", "-C", str(root), "-c", "commit.gpgsign=false",
        *_protocol_config(options.allow_file), *arguments,
    ]  # fmt: skip
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_environment(options),
            # Its own process group: a timeout kills the helpers git started too.
            start_new_session=True,
        )
    except OSError as exc:
        raise GitError(f"git {subcommand}: cannot run git: {exc.strerror}") from exc
    stdout, stderr = _communicate(process, subcommand, options.timeout_seconds, stop)
    return GitResult(
        returncode=process.returncode,
        output=stdout,
        stderr=scrub(stderr.decode("utf-8", "replace"), options.secrets),
    )


def git(
    root: Path,
    *arguments: str,
    options: GitOptions | None = None,
    stop: threading.Event | None = None,
) -> str:
    """`git -C root ARGUMENTS`'s output; a non-zero exit is a GitError with git's message."""
    result = run_git(root, *arguments, options=options, stop=stop)
    if not result.ok:
        raise GitError(f"git {arguments[0]}: {result.stderr}")
    return result.stdout
