"""Project snapshots: a deterministic tar.gz of a project, and its safe extraction.

The archive is a pure function of the files' paths, bytes and executable bits
(sorted entries, zeroed times and owners), so its sha256 is a content hash the
tester can cache by.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import posixpath
import subprocess
import tarfile
from collections.abc import Iterable
from pathlib import Path

# Directories that are environments or caches, never part of a project's source.
SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".tars",
        ".dev",
        ".hg",
        ".svn",
        ".venv",
        "venv",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
        ".nox",
        "node_modules",
    }
)
SKIPPED_SUFFIXES = (".pyc", ".pyo")
MAX_EXTRACTED_BYTES = 2 * 1024**3


class SnapshotError(ValueError):
    """An archive that is unreadable or would write outside its directory."""


def archive_digest(archive: bytes) -> str:
    return hashlib.sha256(archive).hexdigest()


def _git_files(root: Path) -> list[str] | None:
    """Tracked and untracked-but-not-ignored files, or None outside a git work tree."""
    try:
        inside = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return None
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
            timeout=120,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return [name for name in listed.stdout.decode("utf-8", "surrogateescape").split("\0") if name]


def _walked_files(root: Path) -> list[str]:
    files: list[str] = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [
            name for name in subdirs if name not in SKIPPED_DIRS and not name.endswith(".egg-info")
        ]
        relative = Path(directory).relative_to(root)
        files.extend(
            (relative / name).as_posix() for name in names if not name.endswith(SKIPPED_SUFFIXES)
        )
    return files


def project_files(root: Path) -> list[str]:
    """Project-relative POSIX paths of the files a snapshot holds, sorted."""
    listed = _git_files(root)
    if listed is None:
        listed = _walked_files(root)
    return sorted(
        name
        for name in set(listed)
        if not any(part in SKIPPED_DIRS for part in Path(name).parts[:-1])
        and not name.endswith(SKIPPED_SUFFIXES)
        and ((root / name).is_symlink() or (root / name).is_file())
    )


def _symlink_target_inside(root: Path, name: str) -> str | None:
    target = os.readlink(root / name)
    if posixpath.isabs(target):
        return None
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if resolved == ".." or resolved.startswith("../"):
        return None
    return target


class SnapshotTooLarge(SnapshotError):
    """The archive grew past the size it was allowed."""

    def __init__(self, size: int, limit: int, *, partial: bool) -> None:
        super().__init__(f"archive of {size:,} bytes is above the limit of {limit:,} bytes")
        self.size = size
        self.limit = limit
        self.partial = partial
        """True when packing stopped early: the whole archive would be larger still."""


def _entry(root: Path, name: str) -> tuple[tarfile.TarInfo, bytes | None] | None:
    """A file's tar entry with zeroed times and owners; None for a link leading outside."""
    path = root / name
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if path.is_symlink():
        target = _symlink_target_inside(root, name)
        if target is None:
            return None
        info.type = tarfile.SYMTYPE
        info.linkname = target
        info.mode = 0o777
        return info, None
    data = path.read_bytes()
    info.size = len(data)
    info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
    return info, data


def pack_files(root: Path, files: Iterable[str], *, limit: int | None = None) -> bytes:
    """A deterministic tar.gz of `files` under `root`; SnapshotTooLarge past `limit` bytes."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for name in sorted(files):
            entry = _entry(root, name)
            if entry is None:
                continue
            info, data = entry
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
            if limit is not None and buffer.tell() > limit:
                raise SnapshotTooLarge(buffer.tell(), limit, partial=True)
    if limit is not None and buffer.tell() > limit:
        raise SnapshotTooLarge(buffer.tell(), limit, partial=False)
    return buffer.getvalue()


def pack_project(root: Path) -> bytes:
    """A deterministic tar.gz of the project under `root` (git-aware when it is a repository).

    A project whose files add up to more than a snapshot may expand to is refused here,
    before any of it is read, rather than by the tester after it has all been packed.
    """
    root = root.resolve()
    files = project_files(root)
    total = sum((root / name).lstat().st_size for name in files if not (root / name).is_symlink())
    if total > MAX_EXTRACTED_BYTES:
        raise SnapshotError(
            f"the project {root} holds {total:,} bytes of files, above the {MAX_EXTRACTED_BYTES:,} "
            "bytes a test snapshot may hold; git-ignore the large files its tests do not need"
        )
    return pack_files(root, files)


def _checked_members(archive: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = []
    total = 0
    for member in archive.getmembers():
        name = member.name
        parts = Path(name).parts
        if posixpath.isabs(name) or name.startswith("\\") or ".." in parts or ":" in parts[0:1]:
            raise SnapshotError(f"archive member escapes the project: {name!r}")
        if member.issym():
            if posixpath.isabs(member.linkname):
                raise SnapshotError(f"symlink {name!r} points to an absolute path")
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
            if target == ".." or target.startswith("../"):
                raise SnapshotError(f"symlink {name!r} points outside the project")
        elif member.islnk():
            raise SnapshotError(f"hard link {name!r} is not allowed")
        elif not (member.isfile() or member.isdir()):
            raise SnapshotError(f"special file {name!r} is not allowed")
        total += member.size
        if total > MAX_EXTRACTED_BYTES:
            raise SnapshotError("archive expands beyond the size limit")
        members.append(member)
    return members


def verify_archive(archive: bytes) -> None:
    """Raise SnapshotError unless `archive` is a readable tar.gz safe to extract."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as opened:
            _checked_members(opened)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SnapshotError(f"not a readable tar.gz archive: {exc}") from exc


def extract_snapshot(archive_path: Path, destination: Path) -> None:
    """Extract a snapshot into `destination`, refusing anything that would land outside it."""
    try:
        with tarfile.open(archive_path, mode="r:gz") as opened:
            members = _checked_members(opened)
            opened.extractall(destination, members=members, filter="data")
    except (tarfile.TarError, EOFError) as exc:
        raise SnapshotError(f"not a readable tar.gz archive: {exc}") from exc
