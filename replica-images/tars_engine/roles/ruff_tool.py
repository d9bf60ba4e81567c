"""Ruff, run on content through stdin: diagnostics for the analyzer, fixes for the generator.

`--isolated` keeps the project's own configuration out: the curated rule set is
what the engine knows how to rank and fix. The target version is conservative so
that a fix never needs a newer Python than the project may support.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
import threading
from collections import OrderedDict
from pathlib import Path

from pydantic import BaseModel, ConfigDict

RUFF_TIMEOUT_SECONDS = 60
TARGET_VERSION = "py39"

# Rule families the analyzer reports. Families that only restate project taste
# (line length, import order without knowing first-party packages) are left out.
SELECTED_RULES: tuple[str, ...] = (
    "F", "E4", "E7", "E9", "W", "B", "S", "PERF",
    "UP", "SIM", "C4", "RET", "PIE",
    "D101", "D102", "D103", "D200", "D201", "D202", "D209", "D210", "D300",
)  # fmt: skip
IGNORED_RULES: tuple[str, ...] = (
    # Noise in application code: asserts, non-crypto random, every subprocess call.
    "S101", "S311", "S404", "S603", "S607",
    # Matters of taste: else-after-return, ternaries and merged `with` statements are
    # not clearly better, and their fixes rewrite whole blocks.
    "RET505", "RET506", "RET507", "RET508", "SIM108", "SIM117",
)  # fmt: skip


class RuffError(RuntimeError):
    """Ruff could not run or answered something unreadable."""


class RuffDiagnostic(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str
    name: str
    message: str
    line: int
    column: int
    end_line: int
    end_column: int
    fix_applicability: str | None = None

    @property
    def fix_available(self) -> bool:
        return self.fix_applicability is not None

    @property
    def fix_safe(self) -> bool:
        return self.fix_applicability == "safe"


@functools.cache
def ruff_binary() -> str:
    """The ruff next to the running interpreter, else the one the ruff package finds."""
    beside_python = Path(sys.executable).parent / "ruff"
    if beside_python.is_file():
        return str(beside_python)
    try:
        from ruff.__main__ import find_ruff_bin
    except ImportError as exc:
        raise RuffError("ruff is not installed next to this Python") from exc
    return str(find_ruff_bin())


def _run_ruff(arguments: list[str], content: str) -> subprocess.CompletedProcess[str]:
    # `/` as working directory and no cache: nothing is written, so a read-only root
    # filesystem is fine, and --isolated keeps any configuration found there out.
    try:
        return subprocess.run(
            [
                ruff_binary(),
                "check",
                "--isolated",
                "--no-cache",
                "--target-version",
                TARGET_VERSION,
                *arguments,
            ],
            input=content,
            capture_output=True,
            text=True,
            timeout=RUFF_TIMEOUT_SECONDS,
            cwd="/",
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuffError(f"ruff failed to run: {exc}") from exc


_CURATED_RULES = ("--select", ",".join(SELECTED_RULES), "--ignore", ",".join(IGNORED_RULES))
# The generator checks the content the analyzer just checked; in-process they share this.
_CHECK_CACHE_SIZE = 512
_check_cache: OrderedDict[tuple[str, str], tuple[RuffDiagnostic, ...]] = OrderedDict()
_check_cache_lock = threading.Lock()


def _diagnostics(json_text: str) -> list[RuffDiagnostic]:
    try:
        raw = json.loads(json_text or "[]")
    except json.JSONDecodeError as exc:
        raise RuffError(f"ruff printed unreadable JSON: {exc}") from exc
    diagnostics = []
    for item in raw:
        if not item.get("code") or item["code"] == "invalid-syntax":
            continue
        fix = item.get("fix") or None
        diagnostics.append(
            RuffDiagnostic(
                code=item["code"],
                name=item.get("name") or item["code"],
                message=item.get("message", ""),
                line=item["location"]["row"],
                column=item["location"]["column"],
                end_line=item["end_location"]["row"],
                end_column=item["end_location"]["column"],
                fix_applicability=fix.get("applicability") if fix else None,
            )
        )
    return diagnostics


def _remember(path: str, content: str, diagnostics: list[RuffDiagnostic]) -> None:
    key = (path, hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest())
    with _check_cache_lock:
        _check_cache[key] = tuple(diagnostics)
        _check_cache.move_to_end(key)
        while len(_check_cache) > _CHECK_CACHE_SIZE:
            _check_cache.popitem(last=False)


def _remembered(path: str, content: str) -> list[RuffDiagnostic] | None:
    key = (path, hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest())
    with _check_cache_lock:
        cached = _check_cache.get(key)
    return None if cached is None else list(cached)


def check(path: str, content: str) -> list[RuffDiagnostic]:
    """Diagnostics of the curated rule set for one file's content."""
    cached = _remembered(path, content)
    if cached is not None:
        return cached
    completed = _run_ruff(
        ["--output-format", "json", *_CURATED_RULES, "--stdin-filename", path, "-"], content
    )
    if completed.returncode not in (0, 1):
        raise RuffError(f"ruff exited {completed.returncode}: {completed.stderr.strip()[:500]}")
    diagnostics = _diagnostics(completed.stdout)
    _remember(path, content, diagnostics)
    return diagnostics


def fix(
    path: str, content: str, rules: list[str], *, unsafe: bool
) -> tuple[str, list[RuffDiagnostic]]:
    """The content with ruff's fixes for `rules` applied (unsafe ones only when asked),
    and the curated diagnostics that remain in it."""
    arguments = [
        "--fix",
        "--fixable", ",".join(sorted(set(rules))),
        *_CURATED_RULES,
        "--output-format", "json",
        "--stdin-filename", path,
    ]  # fmt: skip
    if unsafe:
        arguments.append("--unsafe-fixes")
    completed = _run_ruff([*arguments, "-"], content)
    if completed.returncode not in (0, 1):
        raise RuffError(
            f"ruff --fix exited {completed.returncode}: {completed.stderr.strip()[:500]}"
        )
    # With stdin, ruff prints the fixed source on stdout and the remaining diagnostics on stderr.
    remaining = _diagnostics(completed.stderr)
    _remember(path, completed.stdout, remaining)
    return completed.stdout, remaining
