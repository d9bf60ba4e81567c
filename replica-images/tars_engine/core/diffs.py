"""Unified diffs: made with difflib, applied in pure Python.

One applier serves the validator, the tester and the coordinator, so a candidate
that validated is applied the same way everywhere. The strict mode trusts the
hunk counts and wants exact context (near the stated line); the lenient mode
reads model-written diffs, whose counts and trailing whitespace are often wrong.

Lines keep their endings (\r\n stays inside a line), so a diff of a CRLF file changes
only the lines it changes; `keep_file_conventions` makes new content follow the old
file's line endings and byte order mark, whoever wrote it.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from tars_engine.core.python_ast import BYTE_ORDER_MARK

NO_NEWLINE_MARKER = "\\ No newline at end of file"
_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_LINE = re.compile(r"[^\n]*\n|[^\n]+")
_BARE_LINE_FEED = re.compile(r"(?<!\r)\n")
CRLF = "\r\n"


class PatchError(ValueError):
    """A diff that cannot be read or does not apply."""


def split_lines(content: str) -> list[str]:
    """Lines with their endings, split on \\n only (form feeds and \\r stay inside lines)."""
    return _LINE.findall(content)


def _line_ending(content: str) -> str | None:
    """The one line ending `content` uses throughout; None for none or a mix."""
    line_feeds, crlfs = content.count("\n"), content.count(CRLF)
    if line_feeds and crlfs == line_feeds:
        return CRLF
    if line_feeds and not crlfs:
        return "\n"
    return None


def keep_file_conventions(old: str, new: str) -> str:
    """`new` with the line endings and byte order mark of `old`, the file it replaces.

    A file that uses one line ending throughout keeps it on every line, new lines
    included; a file with a mix is left as `new` has it.
    """
    ending = _line_ending(old)
    if ending == CRLF:
        new = _BARE_LINE_FEED.sub(CRLF, new)
    elif ending == "\n":
        new = new.replace(CRLF, "\n")
    body = new.removeprefix(BYTE_ORDER_MARK)
    return BYTE_ORDER_MARK + body if old.startswith(BYTE_ORDER_MARK) else body


def make_unified_diff(path: str, old: str, new: str, context: int = 3) -> str:
    """A git-style diff (a/PATH b/PATH) of one file; empty when nothing changed."""
    lines = []
    for line in difflib.unified_diff(
        split_lines(old), split_lines(new), f"a/{path}", f"b/{path}", n=context
    ):
        lines.append(line if line.endswith("\n") else f"{line}\n{NO_NEWLINE_MARKER}\n")
    return "".join(lines)


@dataclass
class Hunk:
    old_start: int
    old_lines: list[str] = field(default_factory=list)
    new_lines: list[str] = field(default_factory=list)


@dataclass
class FilePatch:
    old_path: str
    new_path: str
    hunks: list[Hunk] = field(default_factory=list)


def _header_path(raw: str) -> str:
    path = raw.split("\t", 1)[0].strip()
    if path.startswith(("a/", "b/")):
        path = path[2:]
    return path


def _strip_newline(lines: list[str]) -> None:
    if lines and lines[-1].endswith("\n"):
        lines[-1] = lines[-1][:-1]


def _starts_file_header(lines: list[str], index: int) -> bool:
    return (
        lines[index].startswith("--- ")
        and index + 1 < len(lines)
        and lines[index + 1].startswith("+++ ")
    )


def _read_hunk(lines: list[str], index: int, hunk: Hunk, counts: tuple[int, int] | None) -> int:
    """Consume a hunk body starting at `index`; returns the index after it."""
    old_left, new_left = counts or (0, 0)
    last_side = ""
    while index < len(lines):
        line = lines[index]
        if line.startswith("\\"):
            if last_side in (" ", "-"):
                _strip_newline(hunk.old_lines)
            if last_side in (" ", "+"):
                _strip_newline(hunk.new_lines)
            index += 1
            continue
        if counts is not None and old_left <= 0 and new_left <= 0:
            break
        if counts is None and (line.startswith("@@") or _starts_file_header(lines, index)):
            break
        marker, body = line[:1], line[1:]
        if marker == " " or line == "\n":
            # A bare empty line stands for an empty context line whose space was trimmed.
            body = body if marker == " " else "\n"
            hunk.old_lines.append(body)
            hunk.new_lines.append(body)
            old_left, new_left, last_side = old_left - 1, new_left - 1, " "
        elif marker == "-":
            hunk.old_lines.append(body)
            old_left, last_side = old_left - 1, "-"
        elif marker == "+":
            hunk.new_lines.append(body)
            new_left, last_side = new_left - 1, "+"
        elif counts is not None:
            raise PatchError(f"unexpected line inside a hunk: {line[:80]!r}")
        else:
            break
        index += 1
    if counts is not None and (old_left > 0 or new_left > 0):
        raise PatchError("diff ends inside a hunk")
    return index


def parse_unified_diff(diff: str, *, lenient: bool = False) -> list[FilePatch]:
    """The file patches of a unified diff; lenient ignores the hunk counts."""
    lines = split_lines(diff)
    patches: list[FilePatch] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if _starts_file_header(lines, index):
            patches.append(
                FilePatch(_header_path(line[4:]), _header_path(lines[index + 1][4:].rstrip("\n")))
            )
            index += 2
            continue
        header = _HUNK_HEADER.match(line)
        if header:
            if not patches:
                raise PatchError("hunk before any ---/+++ file header")
            hunk = Hunk(old_start=int(header.group(1)))
            counts = None if lenient else (int(header.group(2) or 1), int(header.group(4) or 1))
            patches[-1].hunks.append(hunk)
            index = _read_hunk(lines, index + 1, hunk, counts)
            continue
        index += 1
    if not patches:
        raise PatchError("no ---/+++ file header found")
    if not any(patch.hunks for patch in patches):
        raise PatchError("diff has no hunks")
    return patches


def diff_paths(diff: str) -> set[str]:
    """Every path a diff names in its file headers (lenient parse)."""
    return {
        path
        for patch in parse_unified_diff(diff, lenient=True)
        for path in (patch.old_path, patch.new_path)
    }


def _normalized(line: str) -> str:
    return line.rstrip()


def _find_block(
    lines: list[str], block: list[str], expected: int, start: int, lenient: bool
) -> int | None:
    if not block:
        return min(max(expected, start), len(lines))
    wanted = [_normalized(line) for line in block] if lenient else block
    size = len(block)
    matches = []
    for position in range(start, len(lines) - size + 1):
        window = lines[position : position + size]
        if ([_normalized(line) for line in window] if lenient else window) == wanted:
            matches.append(position)
    if not matches:
        return None
    return min(matches, key=lambda position: abs(position - expected))


def apply_file_patch(content: str, patch: FilePatch, *, lenient: bool = False) -> str:
    lines = split_lines(content)
    cursor = 0
    drift = 0
    for number, hunk in enumerate(patch.hunks, start=1):
        # A pure insertion's start names the line after which it goes.
        base = max(hunk.old_start - 1, 0) if hunk.old_lines else hunk.old_start
        position = _find_block(lines, hunk.old_lines, base + drift, cursor, lenient)
        if position is None:
            raise PatchError(f"hunk {number} of {patch.new_path} does not match the file")
        replacement = list(hunk.new_lines)
        end = position + len(hunk.old_lines)
        if lenient and replacement and not replacement[-1].endswith("\n") and end < len(lines):
            replacement[-1] += "\n"
        lines[position:end] = replacement
        cursor = position + len(replacement)
        drift = position - base + len(replacement) - len(hunk.old_lines)
    return "".join(lines)


def apply_unified_diff(content: str, diff: str, path: str, *, lenient: bool = False) -> str:
    """Apply a diff that must touch exactly `path` to that file's content."""
    patches = parse_unified_diff(diff, lenient=lenient)
    others = sorted({p for patch in patches for p in (patch.old_path, patch.new_path)} - {path})
    if others:
        raise PatchError(f"diff touches other files: {', '.join(others)}")
    for patch in patches:
        content = apply_file_patch(content, patch, lenient=lenient)
    return content
