"""Ruff, run on content through stdin: diagnostics for the analyzer, fixes for the generator.

Ruff runs with the project's own configuration, in a scratch copy of what ruff reads of
the project (`LintContext`: its configuration files and package layout), so that the
project's ignores, per-file ignores, exclusions, line length and Python version hold.
Where the project has not chosen its rules (no `select`), the engine's rules are added
on top of ruff's defaults, leaving out every rule the project ignores; a project that
chose its rules gets exactly those. Content goes in and out as bytes: line endings and
a byte order mark come back as they went in.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from tars_engine.core.models import SourceFile
from tars_engine.core.ruff_config import (
    RuleChoice,
    capped_target_version,
    rule_choice,
    selectors_overlap,
)
from tars_engine.core.validation import normalized_path

RUFF_TIMEOUT_SECONDS = 60

# Rules the engine adds where the project has not chosen. Families that only restate
# project taste (line length) are left out.
SELECTED_RULES: tuple[str, ...] = (
    "F", "E4", "E7", "E9", "W", "B", "S", "PERF",
    "UP", "SIM", "C4", "RET", "PIE",
    "D101", "D102", "D103", "D200", "D201", "D202", "D209", "D210", "D300",
)  # fmt: skip
# Rules the engine leaves out where the project has not selected them itself.
IGNORED_RULES: tuple[str, ...] = (
    # Noise in application code: asserts, non-crypto random, every subprocess call.
    "S101", "S311", "S404", "S603", "S607",
    # Matters of taste: else-after-return, ternaries and merged `with` statements are
    # not clearly better, and their fixes rewrite whole blocks.
    "RET505", "RET506", "RET507", "RET508", "SIM108", "SIM117",
    # Import order: the sections depend on which packages are first-party, a project's call.
    "I001",
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


def extension_arguments(choice: RuleChoice) -> list[str]:
    """The engine's rules on top of the project's: nothing where the project chose its
    rules, never a rule the project ignores, never ignoring a rule the project selects."""
    if choice.selects:
        return []
    added = [
        rule
        for rule in SELECTED_RULES
        if not any(selectors_overlap(rule, ignored) for ignored in choice.ignored)
    ]
    left_out = [
        rule
        for rule in IGNORED_RULES
        if not any(selectors_overlap(rule, selected) for selected in choice.selected)
    ]
    arguments = ["--extend-select", ",".join(added)] if added else []
    return arguments + (["--ignore", ",".join(left_out)] if left_out else [])


def project_arguments(choice: RuleChoice) -> list[str]:
    """What ruff is told beyond the project's configuration."""
    arguments = extension_arguments(choice)
    target_version = capped_target_version(choice)
    if target_version is not None:
        arguments += ["--target-version", target_version]
    return arguments


def _inside(copy: Path, path: str) -> Path:
    clean = normalized_path(path)
    if clean is None or clean == ".":
        raise RuffError(f"{path!r} is not a project-relative path")
    return copy / clean


def _lay_out(source: SourceFile, copy: Path) -> Path:
    """What ruff reads of the project, under `copy`; returns where the file stands in it."""
    for config in source.lint.configs:
        target = _inside(copy, config.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(config.content.encode("utf-8"))
    for entry in source.lint.layout:
        target = _inside(copy, entry)
        if entry.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
    file = _inside(copy, source.path)
    file.parent.mkdir(parents=True, exist_ok=True)
    return file


def _run_ruff(source: SourceFile, arguments: list[str]) -> tuple[bytes, bytes]:
    # The scratch directory is also ruff's XDG_CONFIG_HOME: a user's own ruff.toml would
    # make a local run judge differently from a replica. No cache: ruff writes nothing.
    try:
        with tempfile.TemporaryDirectory(prefix="tars-ruff-") as scratch:
            copy = Path(scratch, "project")
            file = _lay_out(source, copy)
            completed = subprocess.run(
                [
                    ruff_binary(),
                    "check",
                    "--no-cache",
                    "--force-exclude",
                    *project_arguments(rule_choice(source.lint, source.path)),
                    *arguments,
                    "--stdin-filename",
                    str(file),
                    "-",
                ],
                input=source.content.encode("utf-8", "surrogatepass"),
                capture_output=True,
                timeout=RUFF_TIMEOUT_SECONDS,
                cwd=copy,
                env={**os.environ, "XDG_CONFIG_HOME": scratch},
                check=False,
            )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuffError(f"ruff failed to run: {exc}") from exc
    if completed.returncode not in (0, 1):
        stderr = completed.stderr.decode("utf-8", "replace").strip()
        raise RuffError(f"ruff exited {completed.returncode}: {stderr[:500]}")
    return completed.stdout, completed.stderr


# The generator checks the content the analyzer just checked; in-process they share this.
_CHECK_CACHE_SIZE = 512
_check_cache: OrderedDict[str, tuple[RuffDiagnostic, ...]] = OrderedDict()
_check_cache_lock = threading.Lock()


def _diagnostics(json_text: bytes) -> list[RuffDiagnostic]:
    try:
        raw = json.loads(json_text or b"[]")
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


def _cache_key(source: SourceFile) -> str:
    return hashlib.sha256(source.model_dump_json().encode("utf-8", "surrogatepass")).hexdigest()


def _remember(source: SourceFile, diagnostics: list[RuffDiagnostic]) -> None:
    key = _cache_key(source)
    with _check_cache_lock:
        _check_cache[key] = tuple(diagnostics)
        _check_cache.move_to_end(key)
        while len(_check_cache) > _CHECK_CACHE_SIZE:
            _check_cache.popitem(last=False)


def _remembered(source: SourceFile) -> list[RuffDiagnostic] | None:
    with _check_cache_lock:
        cached = _check_cache.get(_cache_key(source))
    return None if cached is None else list(cached)


def check(source: SourceFile) -> list[RuffDiagnostic]:
    """Diagnostics of the project's rules (and the engine's) for one file's content."""
    cached = _remembered(source)
    if cached is not None:
        return cached
    stdout, _ = _run_ruff(source, ["--output-format", "json"])
    diagnostics = _diagnostics(stdout)
    _remember(source, diagnostics)
    return diagnostics


def check_selected(source: SourceFile, rules: list[str]) -> list[RuffDiagnostic]:
    """Diagnostics of `rules` alone, which need not be among the project's.

    Selected on the command line, `rules` override the project's `ignore`: the caller
    weighs that. Per-file ignores, exclusions and noqa comments hold as in any check.
    """
    stdout, _ = _run_ruff(source, ["--select", ",".join(rules), "--output-format", "json"])
    return [
        diagnostic
        for diagnostic in _diagnostics(stdout)
        if any(diagnostic.code.startswith(rule) for rule in rules)
    ]


def fix(source: SourceFile, rules: list[str], *, unsafe: bool) -> tuple[str, list[RuffDiagnostic]]:
    """The content with ruff's fixes for `rules` applied (unsafe ones only when asked),
    and the diagnostics that remain in it."""
    arguments = ["--fix", "--fixable", ",".join(sorted(set(rules))), "--output-format", "json"]
    if unsafe:
        arguments.append("--unsafe-fixes")
    stdout, stderr = _run_ruff(source, arguments)
    try:
        fixed = stdout.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RuffError(f"ruff --fix printed bytes that are not UTF-8: {exc}") from exc
    # With stdin, ruff prints the fixed source on stdout and the remaining diagnostics on
    # stderr. They are not remembered as the fixed content's check: `--fixable` hides the
    # fixes of every other rule, which the project may well let ruff make.
    return fixed, _diagnostics(stderr)
