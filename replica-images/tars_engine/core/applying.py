"""Apply: write an accepted improvement to the project, or add it to the run's patch.

The project's bytes change only here, and only for a candidate that passed its
tests. Before writing, the file and its last commit must both hold exactly the bytes
the candidate was made from; the new content replaces it in one rename, keeping its
mode. Every improvement becomes one commit carrying a `Tars-Candidate` trailer, which
is how a resumed run knows, even after a crash, what it already applied; a file
written whose commit a crash prevented is recognised by its bytes and committed then.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from tars_engine.core import crash_points
from tars_engine.core.crash_points import Boundary
from tars_engine.core.diffs import PatchError, apply_unified_diff
from tars_engine.core.git import GitError, GitOptions, run_git
from tars_engine.core.models import Candidate, TestResult
from tars_engine.core.state import write_atomically

GIT_TIMEOUT_SECONDS = 120
CANDIDATE_TRAILER = "Tars-Candidate"
# Commits are made by the engine; when the repository has no identity of its own
# configured, this one is used rather than failing the whole run.
FALLBACK_IDENTITY = {
    "GIT_AUTHOR_NAME": "TARS Self-Coding",
    "GIT_AUTHOR_EMAIL": "tars@localhost",
    "GIT_COMMITTER_NAME": "TARS Self-Coding",
    "GIT_COMMITTER_EMAIL": "tars@localhost",
}
MAX_SUBJECT_RULES = 4


class ApplyError(RuntimeError):
    """An improvement could not be applied; the file keeps its original bytes."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_source(root: Path, path: str) -> str:
    """A file's text exactly as stored (no newline translation), so its hash matches its bytes."""
    return (root / path).read_bytes().decode("utf-8")


def _git(root: Path, *arguments: str, env: dict[str, str] | None = None) -> str:
    try:
        completed = run_git(
            root, *arguments, options=GitOptions(env=env or {}, timeout_seconds=GIT_TIMEOUT_SECONDS)
        )
    except GitError as exc:
        raise ApplyError(str(exc)) from exc
    if not completed.ok:
        raise ApplyError(f"git {arguments[0]} failed: {completed.stderr[:500]}")
    return completed.stdout


@functools.cache
def _has_identity(root: Path) -> bool:
    """Whether git knows who commits in `root` (asked once per repository and process)."""
    configured = run_git(
        root,
        "config",
        "--get-regexp",
        r"^user\.(name|email)$",
        options=GitOptions(timeout_seconds=GIT_TIMEOUT_SECONDS),
    )
    keys = {line.split(" ", 1)[0] for line in configured.stdout.splitlines()}
    return {"user.name", "user.email"} <= keys


def _commit_environment(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    if not _has_identity(root):
        for name, value in FALLBACK_IDENTITY.items():
            env.setdefault(name, value)
    return env


def commit_message(candidate: Candidate, test_result: TestResult | None) -> str:
    rules = ", ".join(candidate.rules[:MAX_SUBJECT_RULES]) or "improvement"
    if len(candidate.rules) > MAX_SUBJECT_RULES:
        rules += f" and {len(candidate.rules) - MAX_SUBJECT_RULES} more"
    lines = [f"tars: fix {rules} in {candidate.path}", "", candidate.rationale.strip(), ""]
    lines.append(f"Rules: {', '.join(candidate.rules) or '-'}")
    lines.append(f"Kinds: {', '.join(kind.value for kind in candidate.kinds) or '-'}")
    engine = candidate.engine.value + (f" ({candidate.model})" if candidate.model else "")
    lines.append(f"Engine: {engine}")
    if test_result is not None:
        lines.append(
            f"Tests: passed, {test_result.tests_run} run, {test_result.skipped} skipped "
            f"({' '.join(test_result.command)})"
        )
    lines += ["", f"{CANDIDATE_TRAILER}: {candidate.id}"]
    return "\n".join(lines) + "\n"


def committed_bytes(root: Path, path: str) -> bytes | None:
    """`path` as its last commit holds it, in its working-tree form (git's filters applied);
    None when HEAD has no such file."""
    try:
        completed = run_git(
            root,
            "cat-file",
            "--filters",
            f"HEAD:{path}",
            options=GitOptions(timeout_seconds=GIT_TIMEOUT_SECONDS),
        )
    except GitError as exc:
        raise ApplyError(str(exc)) from exc
    return completed.output if completed.ok else None


def improve(base: bytes, candidate: Candidate) -> bytes:
    """The candidate's diff applied to `base`, the bytes it was made from."""
    try:
        return apply_unified_diff(base.decode("utf-8"), candidate.diff, candidate.path).encode()
    except (PatchError, UnicodeDecodeError) as exc:
        raise ApplyError(f"candidate for {candidate.path} does not apply: {exc}") from exc


def commit_improvement(root: Path, candidate: Candidate, test_result: TestResult | None) -> str:
    """Write the improvement and commit exactly that file; returns the commit id.

    The file's last commit must hold the bytes the candidate was made from, and the
    file must hold them too, or already the improved bytes (written by a run that died
    before its commit): anything else is someone's uncommitted work, which is neither
    overwritten nor committed. Hooks are skipped: a hook that rewrites files would commit
    bytes other than the ones that passed the tests. A failing commit restores the file.
    """
    target = root / candidate.path
    committed = committed_bytes(root, candidate.path)
    if committed is None or sha256_hex(committed) != candidate.base_sha256:
        raise ApplyError(
            f"the candidate was not made from {candidate.path} as last committed "
            "(uncommitted changes, or a commit since); not applied"
        )
    improved = improve(committed, candidate)
    try:
        current = target.read_bytes()
    except OSError as exc:
        raise ApplyError(f"cannot read {candidate.path}: {exc.strerror}") from exc
    mode = target.stat().st_mode & 0o7777
    if current == committed:
        crash_points.reached(Boundary.before_write)
        write_atomically(target, improved, mode=mode)
        crash_points.reached(Boundary.after_write)
    elif current != improved:
        raise ApplyError(f"{candidate.path} has uncommitted changes; left as it is, not applied")
    commit = (
        "commit", "--quiet", "--no-verify", "--only",
        "-m", commit_message(candidate, test_result),
        "--", candidate.path,
    )  # fmt: skip
    try:
        # `--only` commits this path alone, whatever else the index holds: no `git add`.
        _git(root, *commit, env=_commit_environment(root))
    except BaseException:
        write_atomically(target, committed, mode=mode)
        run_git(
            root,
            "reset",
            "--quiet",
            "--",
            candidate.path,
            options=GitOptions(timeout_seconds=GIT_TIMEOUT_SECONDS),
        )
        raise
    crash_points.reached(Boundary.after_commit)
    return _git(root, "rev-parse", "HEAD").strip()


def committed_candidates(root: Path) -> dict[str, str]:
    """Candidate id -> commit, for improvements already committed to the current branch."""
    completed = run_git(
        root,
        "log",
        "--format=%H %(trailers:key=" + CANDIDATE_TRAILER + ",valueonly,separator=%x2C)",
        options=GitOptions(timeout_seconds=GIT_TIMEOUT_SECONDS),
    )
    found: dict[str, str] = {}
    for line in completed.stdout.splitlines():
        commit, _, ids = line.partition(" ")
        for candidate_id in filter(None, (part.strip() for part in ids.split(","))):
            found.setdefault(candidate_id, commit)
    return found


def write_patch(path: Path, candidates: Sequence[Candidate]) -> Path:
    """The run's reviewable patch: every accepted diff, applicable with `git apply`."""
    write_atomically(path, "".join(candidate.diff for candidate in candidates).encode("utf-8"))
    crash_points.reached(Boundary.patch_written)
    return path
