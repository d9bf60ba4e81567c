"""Running the command-line tools tests drive (kubectl, helm, tarscli): one way to run a
tool that fails with the tool's output in the message."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypedDict, Unpack


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
