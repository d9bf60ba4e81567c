"""A reader for the repository's Dockerfiles and .dockerignore: the parts the checks need.

Docker cannot run on every machine the tests run on, so the images are checked by
reading what the builder would read: instructions (with line continuations), stages,
the JSON-form ENTRYPOINT/CMD/HEALTHCHECK, and .dockerignore's pattern rules.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    line: int

    def flags_and_words(self) -> tuple[dict[str, str], list[str]]:
        """`--name=value` flags and the remaining shell words (COPY, FROM, USER...)."""
        flags: dict[str, str] = {}
        words: list[str] = []
        for word in shlex.split(self.arguments):
            if word.startswith("--") and not words:
                name, _, value = word[2:].partition("=")
                flags[name] = value
            else:
                words.append(word)
        return flags, words

    def exec_form(self) -> list[str]:
        """The JSON array of ENTRYPOINT/CMD (the shell form is refused: signals would not reach the process)."""
        value = json.loads(self.arguments)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"line {self.line}: {self.keyword} is not a JSON array of strings")
        return value


@dataclass
class Stage:
    name: str | None
    base: str
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [item for item in self.instructions if item.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def instructions(text: str) -> list[Instruction]:
    """Logical instructions: comments and blank lines dropped, `\\` continuations joined."""
    result: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        logical = " ".join(part for part in pending if part)
        pending = []
        keyword, _, arguments = logical.partition(" ")
        result.append(Instruction(keyword.upper(), arguments.strip(), start))
    if pending:
        raise ValueError("the Dockerfile ends inside a line continuation")
    return result


_VARIABLE = re.compile(r"\$(?:\{(?P<braced>\w+)\}|(?P<bare>\w+))")


def _substituted(word: str, arguments: dict[str, str]) -> str:
    """`$NAME` and `${NAME}` replaced by the global ARG defaults, as FROM reads them."""
    return _VARIABLE.sub(lambda match: arguments.get(match["braced"] or match["bare"], ""), word)


def stages(path: Path) -> list[Stage]:
    """The stages, each FROM's base with the global ARGs (those before the first FROM) in it."""
    parsed: list[Stage] = []
    global_arguments: dict[str, str] = {}
    for instruction in instructions(path.read_text(encoding="utf-8")):
        if instruction.keyword == "FROM":
            _, words = instruction.flags_and_words()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            base = _substituted(words[0], global_arguments)
            parsed.append(Stage(name=name, base=base, line=instruction.line))
        elif instruction.keyword == "ARG" and not parsed:
            for word in instruction.flags_and_words()[1]:
                name, _, default = word.partition("=")
                global_arguments[name] = default
        else:
            if not parsed:
                raise ValueError(f"{path}:{instruction.line}: {instruction.keyword} before FROM")
            parsed[-1].instructions.append(instruction)
    return parsed


# --- .dockerignore ------------------------------------------------------------------------


@dataclass(frozen=True)
class IgnoreRule:
    pattern: re.Pattern[str]
    exclude: bool


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Go filepath.Match plus `**`, as Docker's fileutils compile it; a match also covers what is below."""
    out = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**", index):
            out.append(".*")
            index += 2
            if index < len(pattern) and pattern[index] == "/":
                index += 1
                out[-1] = "(.*/)?"
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(char))
        index += 1
    return re.compile("^" + "".join(out) + "(/.*)?$")


def ignore_rules(path: Path) -> list[IgnoreRule]:
    rules: list[IgnoreRule] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        pattern = re.sub(r"/+", "/", pattern).removeprefix("./")
        rules.append(IgnoreRule(_pattern_regex(pattern), exclude))
    return rules


def is_ignored(relative: str, rules: list[IgnoreRule]) -> bool:
    """Docker's rule: the last pattern matching the path (or a parent of it) decides."""
    ignored = False
    for rule in rules:
        if rule.pattern.match(relative):
            ignored = rule.exclude
    return ignored
