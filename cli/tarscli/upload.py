"""The project a run works on: its root, its targets, and its files packed for an upload source.

The project is the git working tree around the current directory (else the current
directory itself). Targets are checked here, before anything reaches the cluster:
they must exist, be directories and stay inside the project. The archive holds the
whole project, not only the targets, because the tester runs the project's own tests;
it is the engine's project snapshot (tars_engine.core.snapshot): git-aware (tracked files
plus untracked files that are not ignored) and deterministic (sorted entries, no
timestamps or owners), so the same tree always packs to the same bytes.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict
from tars_engine.core.selection import select_files
from tars_engine.core.snapshot import SnapshotTooLarge, pack_files, project_files

from tarscli.errors import CliError

# The API server refuses a ConfigMap whose data exceeds 1 MiB; the rest is kept for
# the object's own metadata.
CONFIGMAP_DATA_LIMIT = 1024 * 1024
ARCHIVE_LIMIT = CONFIGMAP_DATA_LIMIT - 8 * 1024
GIT_TIMEOUT_SECONDS = 60


class ProjectArchive(BaseModel):
    """A packed project: its files (project-relative, sorted) and the gzipped tar."""

    model_config = ConfigDict(frozen=True)

    root: Path
    files: tuple[str, ...]
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


def _git(root: Path, *arguments: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", "-C", str(root), *arguments],
        capture_output=True,
        timeout=GIT_TIMEOUT_SECONDS,
        check=False,
    )


def git_toplevel(directory: Path) -> Path | None:
    """The top level of the git working tree around `directory`; None outside one."""
    try:
        answer = _git(directory, "rev-parse", "--show-toplevel")
    except FileNotFoundError:
        return None
    if answer.returncode == 0 and answer.stdout.strip():
        return Path(os.fsdecode(answer.stdout.strip())).resolve()
    return None


def project_root(cwd: Path) -> Path:
    """The git working tree's top level around `cwd`, else `cwd` itself."""
    return git_toplevel(cwd) or cwd.resolve()


def resolve_targets(root: Path, cwd: Path, targets: list[str]) -> list[str]:
    """Project-relative POSIX paths of `targets` (given relative to `cwd` or absolute).

    Each must exist, be a directory and lie inside `root`; a `..` segment is refused
    outright, as the API refuses it, even where it would land back inside.
    """
    resolved_root = root.resolve()
    relative: list[str] = []
    for target in targets:
        if not target.strip():
            raise CliError("a target must not be empty")
        if ".." in PurePosixPath(target.replace(os.sep, "/")).parts:
            raise CliError(
                f"target {target!r} contains '..': targets must stay inside the project {root}"
            )
        candidate = Path(target) if Path(target).is_absolute() else cwd / target
        if not candidate.exists():
            raise CliError(f"target {target!r} does not exist")
        if not candidate.is_dir():
            raise CliError(f"target {target!r} is not a directory")
        location = candidate.resolve()
        if not location.is_relative_to(resolved_root):
            raise CliError(f"target {target!r} is outside the project {root}")
        path = location.relative_to(resolved_root).as_posix()
        if path not in relative:
            relative.append(path)
    return relative


def require_python_files(root: Path, targets: list[str]) -> None:
    """Refuse targets that hold no Python file a run would look at: such a run would
    succeed having done nothing, which reads as "nothing to improve" when it is a wrong -t."""
    selection = select_files(root, targets)
    if not selection.files and not selection.skipped:
        raise CliError(
            f"no Python files in {', '.join(repr(target) for target in targets)} "
            "(none there, or all ignored by git): nothing to improve"
        )


def pack(root: Path, files: Sequence[str], *, limit: int = ARCHIVE_LIMIT) -> bytes:
    """The engine's deterministic snapshot of `files`, refused once it grows past `limit`."""
    try:
        return pack_files(root, files, limit=limit)
    except SnapshotTooLarge as exc:
        amount = f"more than {exc.size:,} bytes" if exc.partial else f"{exc.size:,} bytes"
        raise CliError(
            f"the project {root} packs to {amount}, above the {limit:,} bytes a ConfigMap upload "
            "can hold; git-ignore large generated files, or create the SelfCodingRun with a git "
            "source"
        ) from exc


def build_archive(root: Path, targets: list[str]) -> ProjectArchive:
    """Pack the project, checking that every target has files in the archive."""
    files = project_files(root)
    for target in targets:
        prefix = "" if target == "." else f"{target}/"
        if not any(name.startswith(prefix) for name in files):
            raise CliError(f"target {target!r} has no files to upload (empty, or ignored by git)")
    return ProjectArchive(root=root, files=tuple(files), data=pack(root, files))
