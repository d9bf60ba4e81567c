"""The project's ruff configuration for one of its files: gathered by the coordinator, read by the roles.

Ruff finds a file's configuration by walking up from the file's directory: in each
directory `.ruff.toml`, then `ruff.toml`, then a `pyproject.toml` with a `[tool.ruff]`
section; the first one found governs the file, over the files it `extend`s. Without a
`target-version` ruff takes the Python version from `requires-python`. The roles have no
project, so the coordinator sends these files with the file (`LintContext`), and what
the project chose is read from them here, the way ruff reads them.
"""

from __future__ import annotations

import posixpath
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict

from tars_engine.core.models import LintContext, ProjectFile
from tars_engine.core.validation import normalized_path

# Ruff's order of precedence among the configuration files of one directory.
CONFIG_NAMES = (".ruff.toml", "ruff.toml", "pyproject.toml")
PYPROJECT = "pyproject.toml"
PACKAGE_MARKER = "__init__.py"
# Where ruff looks for first-party modules when the project does not set `src`.
DEFAULT_SOURCE_ROOTS = (".", "src")
# A chain of `extend`s longer than this is a loop or a mistake; ruff will say which.
MAX_CONFIG_FILES = 32
# The oldest Python ruff can target (py37).
OLDEST_TARGET_MINOR = 7

_SELECTOR = re.compile(r"([A-Z]+)([0-9]*)")
# Pylint's codes carry a category letter after the linter's prefix: PL selects PLC, PLE, ...
_CATEGORIZED_LINTER = "PL"
_TARGET_VERSION = re.compile(r"py3(\d+)")
_LOWER_BOUND = re.compile(r"^\s*(?:>=|>|~=|===?)\s*3\.(\d+)")


class RuleChoice(BaseModel):
    """What the configuration governing a file says about rules and the Python version."""

    model_config = ConfigDict(frozen=True)

    selects: bool = False
    selected: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    target_version: str | None = None
    requires_python: str | None = None


def _ancestors(path: str) -> list[PurePosixPath]:
    directory = PurePosixPath(path).parent
    return [directory, *directory.parents]


def _document(text: str) -> dict[str, Any]:
    """The TOML document, empty when unreadable: ruff itself reports a broken file."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {}


def _table(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _ruff_table(path: str, text: str) -> dict[str, Any] | None:
    """The ruff options of a configuration file; None for a pyproject.toml without them."""
    document = _document(text)
    if PurePosixPath(path).name != PYPROJECT:
        return document
    tool = _table(document.get("tool"))
    return tool["ruff"] if isinstance(tool.get("ruff"), dict) else None


def _strings(value: object) -> tuple[str, ...]:
    return tuple(item for item in value if isinstance(item, str)) if isinstance(value, list) else ()


def _selectors(value: object) -> tuple[str, ...]:
    return tuple(item.upper() for item in _strings(value))


def _relative_to_config(config: str, relative: object) -> str | None:
    """A path a configuration names, project-relative; None when it leaves the project."""
    if not isinstance(relative, str) or posixpath.isabs(relative) or relative.startswith("~"):
        return None
    return normalized_path(posixpath.join(posixpath.dirname(config), relative))


def _extended(config: str, text: str) -> str | None:
    return _relative_to_config(config, (_ruff_table(config, text) or {}).get("extend"))


def _read_text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _source_roots(configs: dict[str, str]) -> list[str]:
    roots = set(DEFAULT_SOURCE_ROOTS)
    for path, text in configs.items():
        for root in _strings((_ruff_table(path, text) or {}).get("src")):
            relative = _relative_to_config(path, root)
            if relative is not None:
                roots.add(relative)
    return sorted(roots)


def _top_level_modules(root: Path, source_root: str) -> list[str]:
    directory = root / source_root
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return []
    modules = []
    for entry in entries:
        relative = PurePosixPath(source_root, entry.name).as_posix()
        if entry.is_dir() and entry.name.isidentifier():
            modules.append(f"{relative}/")
        elif entry.suffix == ".py" and entry.stem.isidentifier() and entry.is_file():
            modules.append(relative)
    return modules


def lint_context(root: Path, path: str) -> LintContext:
    """What ruff would read of the project at `root` when checking its file `path`."""
    configs: dict[str, str] = {}
    pending = [
        (directory / name).as_posix() for directory in _ancestors(path) for name in CONFIG_NAMES
    ]
    while pending and len(configs) < MAX_CONFIG_FILES:
        config = pending.pop(0)
        if config in configs:
            continue
        text = _read_text(root / config)
        if text is None:
            continue
        configs[config] = text
        extended = _extended(config, text)
        if extended is not None:
            pending.append(extended)
    layout = [
        (directory / PACKAGE_MARKER).as_posix()
        for directory in _ancestors(path)
        if (root / directory / PACKAGE_MARKER).is_file()
    ]
    for source_root in _source_roots(configs):
        layout.extend(_top_level_modules(root, source_root))
    return LintContext(
        configs=[ProjectFile(path=config, content=text) for config, text in configs.items()],
        layout=sorted(set(layout)),
    )


def governing_config(context: LintContext, path: str) -> str | None:
    """The configuration file ruff uses for `path`, the way ruff finds it."""
    configs = {config.path: config.content for config in context.configs}
    for directory in _ancestors(path):
        for name in CONFIG_NAMES:
            config = (directory / name).as_posix()
            if config in configs and _ruff_table(config, configs[config]) is not None:
                return config
    return None


def _requires_python(configs: dict[str, str], governing: str) -> str | None:
    # A ruff.toml takes requires-python from the pyproject.toml beside it.
    pyproject = posixpath.join(posixpath.dirname(governing), PYPROJECT).removeprefix("./")
    project = _table(_document(configs.get(pyproject, "")).get("project"))
    value = project.get("requires-python")
    return value if isinstance(value, str) else None


def rule_choice(context: LintContext, path: str) -> RuleChoice:
    """What the project's configuration chose for `path`, over every file it extends."""
    governing = governing_config(context, path)
    if governing is None:
        return RuleChoice()
    configs = {config.path: config.content for config in context.configs}
    chain: list[str] = []
    config: str | None = governing
    while config is not None and config in configs and config not in chain:
        chain.append(config)
        config = _extended(config, configs[config])
    selects, selected, ignored = False, [], []
    target_version = None
    for config in chain:
        options = _ruff_table(config, configs[config]) or {}
        if target_version is None and isinstance(options.get("target-version"), str):
            target_version = options["target-version"]
        for table in (options, _table(options.get("lint"))):
            selects = selects or isinstance(table.get("select"), list)
            selected += _selectors(table.get("select")) + _selectors(table.get("extend-select"))
            ignored += _selectors(table.get("ignore")) + _selectors(table.get("extend-ignore"))
    return RuleChoice(
        selects=selects,
        selected=tuple(selected),
        ignored=tuple(ignored),
        target_version=target_version,
        requires_python=_requires_python(configs, governing),
    )


def _covers(general: str, specific: str) -> bool:
    """Whether the rule selector `general` selects every rule `specific` selects."""
    if general == "ALL":
        return True
    outer, inner = _SELECTOR.fullmatch(general), _SELECTOR.fullmatch(specific)
    if outer is None or inner is None:
        return general == specific
    outer_linter, inner_linter = outer.group(1), inner.group(1)
    if outer_linter == inner_linter:
        return inner.group(2).startswith(outer.group(2))
    return (
        outer_linter == _CATEGORIZED_LINTER
        and not outer.group(2)
        and len(inner_linter) == len(_CATEGORIZED_LINTER) + 1
        and inner_linter.startswith(_CATEGORIZED_LINTER)
    )


def selectors_overlap(first: str, second: str) -> bool:
    """Whether two rule selectors select a rule in common (`S` and `SIM` do not)."""
    return _covers(first, second) or _covers(second, first)


def _oldest_minor(requires_python: str) -> int | None:
    bounds = [
        int(match.group(1))
        for specifier in requires_python.split(",")
        if (match := _LOWER_BOUND.match(specifier))
    ]
    return max(bounds) if bounds else None


def capped_target_version(choice: RuleChoice) -> str | None:
    """The target version to impose when the configuration names a newer Python than
    requires-python allows; None when ruff's own choice is already safe.

    Without a target-version ruff infers it from requires-python itself.
    """
    if choice.target_version is None or choice.requires_python is None:
        return None
    named = _TARGET_VERSION.fullmatch(choice.target_version)
    oldest = _oldest_minor(choice.requires_python)
    if named is None or oldest is None or int(named.group(1)) <= oldest:
        return None
    return f"py3{max(oldest, OLDEST_TARGET_MINOR)}"
