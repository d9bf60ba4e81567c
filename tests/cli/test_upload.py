"""The project, its targets and its archive: real git repositories and real files."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest
from tarscli.errors import CliError
from tarscli.upload import (
    ARCHIVE_LIMIT,
    build_archive,
    pack,
    project_files,
    project_root,
    resolve_targets,
)

from tests.harness.tools import git_init


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A git project: tracked sources and tests, an ignored build dir, an untracked file."""
    root = tmp_path / "project"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "build").mkdir()
    (root / "src" / "pkg" / "core.py").write_text("def add(a, b):\n    return a + b\n")
    (root / "tests" / "test_core.py").write_text(
        "from pkg.core import add\n\ndef test_add():\n    assert add(1, 2) == 3\n"
    )
    (root / "run.sh").write_text("#!/bin/sh\npytest\n")
    (root / "run.sh").chmod(0o755)
    (root / ".gitignore").write_text("build/\n*.log\n")
    (root / "build" / "out.bin").write_bytes(b"\0" * 100)
    git_init(root)
    (root / "src" / "pkg" / "new.py").write_text("VALUE = 1\n")
    (root / "debug.log").write_text("ignored\n")
    return root


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        return {member.name: member for member in archive.getmembers()}


def test_project_root_is_the_git_toplevel_or_the_directory(
    repository: Path, tmp_path: Path
) -> None:
    assert project_root(repository / "src" / "pkg") == repository.resolve()
    plain = tmp_path / "plain"
    plain.mkdir()
    assert project_root(plain) == plain.resolve()


def test_targets_become_project_relative(repository: Path) -> None:
    assert resolve_targets(repository, repository, ["src", "tests/"]) == ["src", "tests"]
    assert resolve_targets(repository, repository / "src", ["pkg", str(repository / "tests")]) == [
        "src/pkg",
        "tests",
    ]
    assert resolve_targets(repository, repository, [".", "src", "src/"]) == [".", "src"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("missing", "target 'missing' does not exist"),
        ("run.sh", "target 'run.sh' is not a directory"),
        ("../elsewhere", "contains '..'"),
        ("src/../tests", "contains '..'"),
    ],
)
def test_bad_targets_are_refused(repository: Path, target: str, message: str) -> None:
    (repository.parent / "elsewhere").mkdir()
    with pytest.raises(CliError, match=message.replace("(", r"\(").replace(".", r"\.")):
        resolve_targets(repository, repository, [target])


def test_targets_outside_the_project_are_refused(repository: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(CliError, match="is outside the project"):
        resolve_targets(repository, repository, [str(outside)])
    (repository / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(CliError, match="'escape' is outside the project"):
        resolve_targets(repository, repository, ["escape"])


def test_project_files_follow_git(repository: Path) -> None:
    (repository / "run.sh").unlink()  # tracked but deleted: not part of the snapshot
    assert project_files(repository) == [
        ".gitignore",
        "src/pkg/core.py",
        "src/pkg/new.py",
        "tests/test_core.py",
    ]


def test_project_files_without_git_skip_caches(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print(1)\n")
    (tmp_path / "app" / "__pycache__").mkdir()
    (tmp_path / "app" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / ".venv" / "lib").mkdir(parents=True)
    (tmp_path / ".venv" / "lib" / "site.py").write_text("")
    assert project_files(tmp_path) == ["app/main.py"]


def test_archive_is_deterministic_and_complete(repository: Path) -> None:
    first = build_archive(repository, ["src"])
    os.utime(repository / "src" / "pkg" / "core.py", (1, 1))
    second = build_archive(repository, ["src"])
    assert first.data == second.data
    entries = members(first.data)
    assert sorted(entries) == list(first.files)
    assert (
        "tests/test_core.py" in entries
        and "build/out.bin" not in entries
        and "debug.log" not in entries
    )
    assert entries["run.sh"].mode == 0o755 and entries["src/pkg/core.py"].mode == 0o644
    assert all(
        entry.mtime == 0 and entry.uid == 0 and entry.uname == "" for entry in entries.values()
    )
    with tarfile.open(fileobj=io.BytesIO(first.data), mode="r:gz") as archive:
        extracted = archive.extractfile("src/pkg/core.py")
        assert (
            extracted is not None
            and extracted.read() == (repository / "src/pkg/core.py").read_bytes()
        )
    assert gzip.decompress(first.data)  # a plain gzip stream
    assert first.data[4:8] == b"\0\0\0\0"  # no timestamp in the gzip header


def test_symlinks_are_stored_as_links(repository: Path) -> None:
    (repository / "src" / "link.py").symlink_to("pkg/core.py")
    entries = members(build_archive(repository, ["src"]).data)
    assert entries["src/link.py"].issym() and entries["src/link.py"].linkname == "pkg/core.py"


def test_archive_over_the_limit_is_refused(repository: Path) -> None:
    (repository / "src" / "blob.bin").write_bytes(os.urandom(ARCHIVE_LIMIT + 1))
    with pytest.raises(
        CliError, match=rf"packs to [0-9,]+ bytes, above the {ARCHIVE_LIMIT:,} bytes"
    ):
        build_archive(repository, ["src"])
    with pytest.raises(CliError, match="packs to (more than )?[0-9,]+ bytes, above the 10 bytes"):
        pack(repository, ["src/pkg/core.py", "tests/test_core.py"], limit=10)


def test_target_without_packable_files_is_refused(repository: Path) -> None:
    with pytest.raises(CliError, match="target 'build' has no files to upload"):
        build_archive(repository, ["build"])
