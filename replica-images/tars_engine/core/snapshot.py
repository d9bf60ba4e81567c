"""Project snapshots: a deterministic tar.gz of a project, and its safe extraction.

The archive is a pure function of the files' paths, bytes and executable bits
(sorted entries, zeroed times and owners), so its sha256 is a content hash the
tester can cache by.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import gzip
import hashlib
import io
import os
import posixpath
import shutil
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field
from tars_api.names import ReplicaEnv

from tars_engine.core.git import GitError, GitOptions, git, run_git

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
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_MAX_EXTRACTED_BYTES = 512 * 1024**2
# Links followed while resolving one link's target: the kernel's own limit.
MAX_LINK_HOPS = 40
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class SnapshotError(ValueError):
    """An archive that is unreadable, too large, or would write outside its directory."""


class ArchiveLimits(BaseModel):
    """How much an archive may hold once extracted."""

    model_config = ConfigDict(frozen=True)

    max_entries: int = Field(default=DEFAULT_MAX_ENTRIES, ge=1)
    max_bytes: int = Field(default=DEFAULT_MAX_EXTRACTED_BYTES, ge=1)


DEFAULT_LIMITS = ArchiveLimits()


class _Kind(enum.Enum):
    file = "file"
    directory = "directory"
    symlink = "symlink"


class _Entry(NamedTuple):
    path: str
    """Normalised: no empty or `.` segments."""
    kind: _Kind
    member: tarfile.TarInfo


def archive_digest(archive: bytes) -> str:
    return hashlib.sha256(archive).hexdigest()


def _git_files(root: Path) -> list[str] | None:
    """Tracked and untracked-but-not-ignored files, or None outside a git work tree."""
    try:
        inside = run_git(
            root, "rev-parse", "--is-inside-work-tree", options=GitOptions(timeout_seconds=30)
        )
        if not inside.ok or inside.stdout.strip() != "true":
            return None
        listed = git(
            root, "ls-files", "-z", "--cached", "--others", "--exclude-standard",
            options=GitOptions(timeout_seconds=120),
        )  # fmt: skip
    except GitError:
        return None
    return [name for name in listed.split("\0") if name]


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


def pack_project(root: Path, limits: ArchiveLimits = DEFAULT_LIMITS) -> bytes:
    """A deterministic tar.gz of the project under `root` (git-aware when it is a repository).

    A project whose files add up to more than a snapshot may expand to is refused here,
    before any of it is read, rather than by the tester after it has all been packed.
    """
    root = root.resolve()
    files = project_files(root)
    total = sum((root / name).lstat().st_size for name in files if not (root / name).is_symlink())
    if total > limits.max_bytes:
        raise SnapshotError(
            f"the project {root} holds {total:,} bytes of files, above the {limits.max_bytes:,} "
            "bytes a test snapshot may hold; git-ignore the large files its tests do not need "
            f"({ReplicaEnv.archive_max_bytes} sets the limit)"
        )
    return pack_files(root, files)


def _member_path(name: str) -> str:
    """The member's path inside the destination, normalised; SnapshotError when it has none."""
    if name.startswith("/"):
        raise SnapshotError(f"archive member has an absolute path: {name!r}")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts:
        raise SnapshotError(f"archive member has no name: {name!r}")
    if ".." in parts:
        raise SnapshotError(f"archive member escapes the project: {name!r}")
    if ".git" in parts:
        # Git would run the commands a planted .git/config names (fsmonitor, hooks).
        raise SnapshotError(f"archive member is inside a .git directory: {name!r}")
    return "/".join(parts)


def _kind(member: tarfile.TarInfo) -> _Kind:
    if member.issym():
        return _Kind.symlink
    if member.isdir():
        return _Kind.directory
    if member.isreg() and not member.issparse():
        return _Kind.file
    if member.islnk():
        raise SnapshotError(f"hard link {member.name!r} is not allowed")
    what = (
        "a character device" if member.ischr()
        else "a block device" if member.isblk()
        else "a FIFO" if member.isfifo()
        else "a sparse file" if member.issparse()
        else f"of type {member.type!r}"
    )  # fmt: skip
    raise SnapshotError(f"{member.name!r} is {what}: only files, directories and links are allowed")


def _ancestors(path: str) -> Iterator[str]:
    parts = path.split("/")
    for end in range(1, len(parts)):
        yield "/".join(parts[:end])


def _check_link_target(path: str, links: Mapping[str, str]) -> None:
    """Refuse a symlink unless its target, following the archive's own links, stays inside."""
    target = links[path]
    if not target or posixpath.isabs(target):
        raise SnapshotError(f"symlink {path!r} points to an absolute path or nowhere")
    resolved: list[str] = []
    pending = collections.deque(_directory_parts(path) + target.split("/"))
    hops = 0
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                raise SnapshotError(f"symlink {path!r} points outside the project")
            resolved.pop()
            continue
        through = links.get("/".join([*resolved, part]))
        if through is None:
            resolved.append(part)
            continue
        hops += 1
        if hops > MAX_LINK_HOPS or posixpath.isabs(through):
            raise SnapshotError(f"symlink {path!r} loops or points outside the project")
        pending.extendleft(reversed(through.split("/")))


def _directory_parts(path: str) -> list[str]:
    return path.split("/")[:-1]


def _check_tree(entries: Sequence[_Entry]) -> None:
    """Refuse names given twice and members under a file or a link (writing would follow it)."""
    kinds: dict[str, _Kind] = {}
    links: dict[str, str] = {}
    for entry in entries:
        earlier = kinds.get(entry.path)
        if earlier is not None and not (earlier is entry.kind is _Kind.directory):
            raise SnapshotError(f"archive holds {entry.path!r} twice")
        kinds[entry.path] = entry.kind
        if entry.kind is _Kind.symlink:
            links[entry.path] = entry.member.linkname
    for entry in entries:
        for parent in _ancestors(entry.path):
            if kinds.get(parent, _Kind.directory) is not _Kind.directory:
                raise SnapshotError(
                    f"archive member {entry.path!r} lies under {parent!r}, which is a "
                    f"{kinds[parent].value}, not a directory"
                )
        if entry.kind is _Kind.symlink:
            _check_link_target(entry.path, links)


def _checked_entries(archive: tarfile.TarFile, limits: ArchiveLimits) -> list[_Entry]:
    """Every member, checked; reading stops at the first one past a limit."""
    entries: list[_Entry] = []
    expanded = 0
    while (member := archive.next()) is not None:
        if len(entries) == limits.max_entries:
            raise SnapshotError(
                f"archive has more than {limits.max_entries:,} entries "
                f"({ReplicaEnv.archive_max_entries} sets the limit)"
            )
        entry = _Entry(_member_path(member.name), _kind(member), member)
        if entry.kind is _Kind.file:
            expanded += member.size
        if expanded > limits.max_bytes:
            raise SnapshotError(
                f"archive expands to more than {limits.max_bytes:,} bytes "
                f"({ReplicaEnv.archive_max_bytes} sets the limit)"
            )
        entries.append(entry)
    _check_tree(entries)
    return entries


def verify_archive(archive: bytes, limits: ArchiveLimits = DEFAULT_LIMITS) -> None:
    """Raise SnapshotError unless `archive` is a readable tar.gz safe to extract."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as opened:
            _checked_entries(opened, limits)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise SnapshotError(f"not a readable tar.gz archive: {exc}") from exc


def _open_directory(name: str, parent: int) -> int:
    """The directory `name` in `parent`, made when missing; never reached through a link."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o755, dir_fd=parent)
    return os.open(name, _DIRECTORY_FLAGS, dir_fd=parent)


def _parent_directory(root: int, path: str) -> int:
    """The parent of `path` under `root`, each step a real directory opened without following."""
    directory = os.dup(root)
    for part in _directory_parts(path):
        try:
            child = _open_directory(part, directory)
        finally:
            os.close(directory)
        directory = child
    return directory


def _write(archive: tarfile.TarFile, entry: _Entry, parent: int) -> None:
    name = posixpath.basename(entry.path)
    if entry.kind is _Kind.directory:
        os.close(_open_directory(name, parent))
    elif entry.kind is _Kind.symlink:
        os.symlink(entry.member.linkname, name, dir_fd=parent)
    else:
        source = archive.extractfile(entry.member)
        assert source is not None  # a regular file always has data
        descriptor = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=parent)
        with os.fdopen(descriptor, "wb") as out:
            shutil.copyfileobj(source, out)
            os.fchmod(out.fileno(), 0o755 if entry.member.mode & 0o100 else 0o644)


def _extract(archive: tarfile.TarFile, entry: _Entry, root: int, destination: str) -> None:
    # The standard library's filter judges each member too, after the checks above.
    tarfile.data_filter(entry.member, destination)
    try:
        parent = _parent_directory(root, entry.path)
        try:
            _write(archive, entry, parent)
        finally:
            os.close(parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
            raise SnapshotError(
                f"archive member {entry.path!r} would be written through a link or over a file"
            ) from exc
        raise SnapshotError(f"cannot extract {entry.path!r}: {exc.strerror}") from exc


def extract_snapshot(
    archive_path: Path, destination: Path, limits: ArchiveLimits = DEFAULT_LIMITS
) -> None:
    """Extract a snapshot into `destination`, refusing anything that would land outside it.

    Every member is checked before anything is written; then each is written relative to
    an open directory, through directories opened without following links, into a name
    that must not exist yet, so a link cannot redirect a write even if a check missed it.
    """
    try:
        with tarfile.open(archive_path, mode="r:gz") as opened:
            entries = _checked_entries(opened, limits)
            destination.mkdir(parents=True, exist_ok=True)
            root = os.open(destination, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for entry in entries:
                    _extract(opened, entry, root, str(destination))
            finally:
                os.close(root)
    except tarfile.FilterError as exc:
        raise SnapshotError(f"archive member refused: {exc}") from exc
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise SnapshotError(f"not a readable tar.gz archive: {exc}") from exc
