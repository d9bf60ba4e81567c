"""Running the command-line tools tests drive (kubectl, helm, tarscli, git): one way to run
a tool that fails with the tool's output in the message, and git with the identity its
commits need, including the repository every project fixture starts from."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn, TypedDict, Unpack

import pytest

# Test machines need not have a git identity configured; commits must not depend on one.
GIT_IDENTITY = ("-c", "user.name=t", "-c", "user.email=t@example.com")


class ToolError(subprocess.CalledProcessError):
    """A failed tool run; unlike its base class its message includes the tool's output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.stdout}\nstderr: {self.stderr}"


class RunOptions(TypedDict, total=False):
    input: str | None
    cwd: Path | None
    env: Mapping[str, str] | None
    timeout: float | None


def run_tool(
    command: Sequence[str], *, check: bool = True, **options: Unpack[RunOptions]
) -> subprocess.CompletedProcess[str]:
    """Run COMMAND with its output captured as text; with CHECK a failure raises ToolError."""
    result = subprocess.run(list(command), capture_output=True, text=True, check=False, **options)
    if check and result.returncode != 0:
        raise ToolError(result.returncode, result.args, result.stdout, result.stderr)
    return result


def git(root: Path, *arguments: str) -> str:
    """`git ARGUMENTS` in the repository at ROOT; its stdout."""
    return run_tool(["git", "-C", str(root), *GIT_IDENTITY, *arguments]).stdout


def git_init(root: Path, message: str = "init") -> Path:
    """Make ROOT a git repository on branch main with everything in it in one commit."""
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return root


def path_with_only_git(directory: Path) -> str:
    """A PATH holding nothing but git, in `directory`: a real machine without other tools."""
    found = shutil.which("git")
    assert found is not None, "git is not on PATH"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "git").symlink_to(found)
    return str(directory)


def missing_component(problem: str) -> NoReturn:
    """A test's real component is missing: it skips, except under CI=true, where it fails."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"required under CI=true: {problem}")
    pytest.skip(problem)


def stop_process(process: subprocess.Popen[bytes], grace_seconds: float = 30) -> None:
    """SIGTERM, then SIGKILL if PROCESS has not exited within GRACE_SECONDS; reaped either way."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
