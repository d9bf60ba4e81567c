"""An edit protocol a small model can follow: one focused task per request.

A task is one region of a file (a function, a class, or the module's head) and the
findings in it, shown with line numbers. The model answers through Ollama's structured
outputs with search/replace edits of that region (`EditAnswer`), or, for a small file,
with the whole new file (`WholeFileAnswer`). Applying an answer is lenient about what
small models get wrong and that does not change meaning: code fences of any language
case or without their closing fence, line numbers copied into the search text, trailing
whitespace and indentation that is off as a whole.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, Field, ValidationError

from tars_engine.core import python_ast
from tars_engine.core.models import Finding

# Files this short are asked whole: a small model rewrites them more reliably than it
# copies search text exactly.
WHOLE_FILE_MAX_LINES = 40
MAX_TASKS_PER_FILE = 2
MAX_EDITS = 4
# A region this long fits in one search text (MAX_SCHEMA_STRING) at about 30 characters a line.
MAX_REGION_LINES = 60
MAX_FINDINGS_PER_TASK = 8
MAX_EXPLANATION_CHARS = 400

_FENCE_OPEN = re.compile(r"^\s*```[\w+-]*[^\n]*\n", re.IGNORECASE)
_FENCE_CLOSE = re.compile(r"\n?\s*```\s*$")
_LINE_NUMBER = re.compile(r"^\s*\d+\s?\| ?")


# Ollama turns a schema into a grammar that refuses more than 2000 repeats of anything
# ("failed to load model vocabulary required for format"): no string may be longer.
MAX_SCHEMA_STRING = 2000


class SearchReplace(BaseModel):
    search: str = Field(
        max_length=MAX_SCHEMA_STRING, description="lines copied exactly from the region"
    )
    replace: str = Field(
        max_length=MAX_SCHEMA_STRING, description="the lines to put in their place"
    )


class EditAnswer(BaseModel):
    explanation: str = Field(max_length=MAX_EXPLANATION_CHARS)
    edits: list[SearchReplace] = Field(min_length=1, max_length=MAX_EDITS)


class WholeFileAnswer(BaseModel):
    explanation: str = Field(max_length=MAX_EXPLANATION_CHARS)
    content: str = Field(description="the complete improved file")


AnswerT = TypeVar("AnswerT", bound=BaseModel)


class EditError(ValueError):
    """An answer that cannot be applied; the message is the rejection."""


@dataclass(frozen=True)
class Task:
    """Lines `first`..`last` (1-based, inclusive) of a file, and the findings inside them."""

    first: int
    last: int
    findings: tuple[Finding, ...]
    whole_file: bool

    def covers(self, line: int) -> bool:
        return self.first <= line <= self.last


def _regions(tree: ast.Module, line_count: int) -> list[tuple[int, int]]:
    """Top-level definitions, the methods of classes, and the module's head before them."""
    regions: list[tuple[int, int]] = []
    head_end = line_count
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            head_end = min(head_end, start - 1)
            regions.append((start, node.end_lineno or node.lineno))
            if isinstance(node, ast.ClassDef):
                regions.extend(
                    (member.lineno, member.end_lineno or member.lineno)
                    for member in node.body
                    if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef))
                )
    if head_end >= 1:
        regions.append((1, head_end))
    return regions


def plan_tasks(content: str, findings: list[Finding]) -> list[Task]:
    """At most MAX_TASKS_PER_FILE tasks, the regions with the most findings first."""
    lines = content.splitlines()
    if not findings:
        return []
    if len(lines) <= WHOLE_FILE_MAX_LINES:
        return [Task(1, max(1, len(lines)), tuple(findings[:MAX_FINDINGS_PER_TASK]), True)]
    regions = _regions(python_ast.parse(content), len(lines))
    by_region: dict[tuple[int, int], list[Finding]] = {}
    for finding in findings:
        line = finding.location.line
        # The innermost region holding the line: a method before its class.
        holding = [region for region in regions if region[0] <= line <= region[1]]
        if not holding:
            holding = [(max(1, line - 5), min(len(lines), line + 5))]
        region = min(holding, key=lambda r: r[1] - r[0])
        if region[1] - region[0] + 1 > MAX_REGION_LINES:
            region = (max(region[0], line - 10), min(region[1], line + 10))
        by_region.setdefault(region, []).append(finding)
    ordered = sorted(by_region.items(), key=lambda item: (-len(item[1]), item[0]))
    tasks: list[Task] = []
    for (first, last), found in ordered:
        if any(task.first <= last and first <= task.last for task in tasks):
            continue
        tasks.append(Task(first, last, tuple(found[:MAX_FINDINGS_PER_TASK]), False))
        if len(tasks) == MAX_TASKS_PER_FILE:
            break
    return sorted(tasks, key=lambda task: task.first)


def numbered(content: str, first: int, last: int) -> str:
    lines = content.splitlines()[first - 1 : last]
    width = len(str(last))
    return "\n".join(f"{number:>{width}}| {line}" for number, line in enumerate(lines, first))


def _unfence(text: str) -> str:
    """The code inside a fence a model put around it (any language case, closed or not)."""
    if _FENCE_OPEN.match(text):
        text = _FENCE_OPEN.sub("", text, count=1)
        text = _FENCE_CLOSE.sub("", text)
    return text


def _strip_line_numbers(text: str) -> str:
    lines = text.split("\n")
    if lines and all(_LINE_NUMBER.match(line) for line in lines if line.strip()):
        return "\n".join(_LINE_NUMBER.sub("", line, count=1) for line in lines)
    return text


def _indentation(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _find_lines(haystack: list[str], needle: list[str], start: int, end: int) -> tuple[int, int]:
    """Where `needle` stands in haystack[start:end], and by how many columns it was off.

    Tried in order: the lines as given, ignoring trailing whitespace; then ignoring a
    common indentation, which the model then got wrong by one amount for every line.
    """
    size = len(needle)
    stripped = [line.rstrip() for line in needle]
    for index in range(start, max(start, end - size + 1)):
        if [line.rstrip() for line in haystack[index : index + size]] == stripped:
            return index, 0
    dedented = [line.strip() for line in needle]
    for index in range(start, max(start, end - size + 1)):
        window = haystack[index : index + size]
        if [line.strip() for line in window] == dedented and window[0].strip():
            return index, len(_indentation(window[0])) - len(_indentation(needle[0]))
    raise EditError("an edit's search text is not in the region it was given")


def _shifted(line: str, columns: int) -> str:
    if not line.strip() or columns == 0:
        return line
    if columns > 0:
        return " " * columns + line
    return line[min(-columns, len(_indentation(line))) :]


def apply_edits(content: str, task: Task, answer: EditAnswer) -> str:
    """`content` with each edit made inside the task's region (searching there first)."""
    lines = content.split("\n")
    for edit in answer.edits:
        search = _strip_line_numbers(_unfence(edit.search)).strip("\n")
        replace = _unfence(edit.replace).strip("\n")
        if not search.strip():
            raise EditError("an edit has an empty search text")
        needle = search.split("\n")
        # The region may have moved by earlier edits; search it with some slack, then anywhere.
        slack = len(lines) - len(content.split("\n"))
        region_start = max(0, task.first - 1 - abs(slack))
        region_end = min(len(lines), task.last + abs(slack))
        try:
            index, shift = _find_lines(lines, needle, region_start, region_end)
        except EditError:
            index, shift = _find_lines(lines, needle, 0, len(lines))
        replacement = [_shifted(line, shift) for line in replace.split("\n")]
        lines[index : index + len(needle)] = replacement if replace else []
    return "\n".join(lines)


def whole_file(content: str, answer: WholeFileAnswer) -> str:
    new = _unfence(answer.content)
    if content.endswith("\n") and not new.endswith("\n"):
        new += "\n"
    return new


def parse_answer(text: str, schema: type[AnswerT]) -> AnswerT:
    """The answer as `schema`; a JSON object wrapped in prose or a fence is found too."""
    try:
        return schema.model_validate_json(text)
    except ValidationError as first_error:
        start, end = text.find("{"), text.rfind("}")
        if start != -1 and end > start:
            try:
                return schema.model_validate(json.loads(text[start : end + 1]))
            except (ValueError, ValidationError):
                pass
        raise EditError(
            f"answer does not follow the {schema.__name__} format "
            f"({first_error.error_count()} errors)"
        ) from first_error
