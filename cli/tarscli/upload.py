"""The project a run works on: its root, its targets, and its files packed for an upload source.

The project is the git working tree around the current directory (else the current
directory itself). Targets are checked here, before anything reaches the cluster:
they must exist, be directories and stay inside the project. The archive holds the
whole project, not only the targets, because the tester runs the project's own tests;
it is git-aware (tracked files plus untracked files that are not ignored) and
deterministic (sorted entries, no timestamps or owners), so the same tree always
packs to the same bytes.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict

from tarscli.errors import CliError

# The API server refuses a ConfigMap whose data exceeds 1 MiB; the rest is kept for
# the object's own metadata.
CONFIGMAP_DATA_LIMIT = 1024 * 1024
ARCHIVE_LIMIT = CONFIGMAP_DATA_LIMIT - 8 * 1024
# Without git there is no ignore file to consult; these never belong in a snapshot.
UNTRACKED_NOISE = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "__pycache__",
        ".venv",
        "venv",
        "node_modules",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
        ".nox",
        ".dev",
    }
)
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


def project_root(cwd: Path) -> Path:
    """The git working tree's top level around `cwd`, else `cwd` itself."""
    try:
        answer = _git(cwd, "rev-parse", "--show-toplevel")
    except FileNotFoundError:
        return cwd.resolve()
    if answer.returncode == 0 and answer.stdout.strip():
        return Path(os.fsdecode(answer.stdout.strip())).resolve()
    return cwd.resolve()


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


def project_files(root: Path) -> list[str]:
    """Files to pack, project-relative and sorted: git's view when `root` is a work tree."""
    try:
        answer = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    except FileNotFoundError:
        answer = None
    names: list[str]
    if answer is not None and answer.returncode == 0:
        names = [os.fsdecode(name) for name in answer.stdout.split(b"\0") if name]
    else:
        names = _walk(root)
    packable = []
    for name in dict.fromkeys(names):
        path = root / name
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue  # tracked but deleted in the work tree: not part of the snapshot
        if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
            packable.append(PurePosixPath(name).as_posix())
    return sorted(packable)


def _walk(root: Path) -> list[str]:
    names: list[str] = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(name for name in subdirectories if name not in UNTRACKED_NOISE)
        base = Path(directory).relative_to(root)
        names.extend((base / name).as_posix() for name in files)
    return names


def _entry(root: Path, name: str) -> tuple[tarfile.TarInfo, bytes | None]:
    path = root / name
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    mode = path.lstat().st_mode
    if stat.S_ISLNK(mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(path)
        info.mode = 0o777
        return info, None
    content = path.read_bytes()
    info.size = len(content)
    info.mode = 0o755 if mode & stat.S_IXUSR else 0o644
    return info, content


def pack(root: Path, files: list[str] | tuple[str, ...], *, limit: int = ARCHIVE_LIMIT) -> bytes:
    """A deterministic tar.gz of `files` under `root`; refuses once it grows past `limit`."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(
            filename="", fileobj=buffer, mode="wb", mtime=0, compresslevel=9
        ) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for name in sorted(files):
            info, content = _entry(root, name)
            archive.addfile(info, io.BytesIO(content) if content is not None else None)
            if buffer.tell() > limit:
                raise _too_large(root, buffer.tell(), limit, partial=True)
    data = buffer.getvalue()
    if len(data) > limit:
        raise _too_large(root, len(data), limit, partial=False)
    return data


def _too_large(root: Path, size: int, limit: int, *, partial: bool) -> CliError:
    amount = f"more than {size:,} bytes" if partial else f"{size:,} bytes"
    return CliError(
        f"the project {root} packs to {amount}, above the {limit:,} bytes a ConfigMap upload can hold; "
        "git-ignore large generated files, or create the SelfCodingRun with a git source"
    )


def build_archive(root: Path, targets: list[str]) -> ProjectArchive:
    """Pack the project, checking that every target has files in the archive."""
    files = project_files(root)
    for target in targets:
        prefix = "" if target == "." else f"{target}/"
        if not any(name.startswith(prefix) for name in files):
            raise CliError(f"target {target!r} has no files to upload (empty, or ignored by git)")
    return ProjectArchive(root=root, files=tuple(files), data=pack(root, files))
