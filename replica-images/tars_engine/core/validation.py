"""Candidate validation, the same for every engine: nobody sees a candidate that fails it.

A candidate must touch exactly its own file, never a test file, stay inside the
run's targets, apply to the content it was made for, change more than whitespace,
leave a file that parses, and keep every name the file defines (functions, classes,
methods, module constants): a change that drops one is not an improvement, whatever
the tests say.
"""

from __future__ import annotations

import ast
import hashlib
import io
import posixpath
import tokenize

from tars_api.vocabulary import EngineName

from tars_engine.core import python_ast
from tars_engine.core.diffs import (
    PatchError,
    apply_unified_diff,
    diff_paths,
    keep_file_conventions,
    make_unified_diff,
)
from tars_engine.core.models import (
    Candidate,
    FindingKind,
    GenerateRequest,
    GenerateResult,
    SourceFile,
)

TEST_DIR_NAMES = frozenset({"tests", "test"})


def normalized_path(path: str) -> str | None:
    """The clean project-relative POSIX form of `path`, or None when it leaves the project."""
    if not path or path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
        return None
    clean = posixpath.normpath(path.replace("\\", "/"))
    if clean == ".." or clean.startswith("../"):
        return None
    return clean


def is_test_file(path: str) -> bool:
    parts = path.replace("\\", "/").split("/")
    name = parts[-1]
    return (
        name == "conftest.py"
        or (name.startswith("test_") and name.endswith(".py"))
        or name.endswith("_test.py")
        or any(part in TEST_DIR_NAMES for part in parts[:-1])
    )


def is_inside_targets(path: str, targets: list[str]) -> bool:
    clean = normalized_path(path)
    if clean is None:
        return False
    for target in targets:
        clean_target = normalized_path(target)
        if clean_target is None:
            continue
        # A target is a directory or, for a single-file run, the file itself.
        if clean_target in (".", clean) or clean.startswith(f"{clean_target}/"):
            return True
    return False


def syntax_problem(content: str) -> str | None:
    try:
        python_ast.parse(content)
    except SyntaxError as exc:
        return f"line {exc.lineno}: {exc.msg}"
    except ValueError as exc:
        return str(exc)
    return None


def defined_names(tree: ast.Module) -> set[str]:
    """Functions, classes, their methods, and module-level assigned names, as `Class.method`."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            names.update(
                f"{node.name}.{member.name}"
                for member in node.body
                if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef))
            )
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
    return names


_LAYOUT_TOKENS = frozenset({tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT})


def _significant_tokens(content: str) -> list[tuple[int, str]]:
    tokens = tokenize.generate_tokens(io.StringIO(content).readline)
    return [(token.type, token.string) for token in tokens if token.type not in _LAYOUT_TOKENS]


def only_whitespace_changed(before: str, after: str) -> bool:
    """The same tokens in the same order (comments and strings included): layout alone moved."""
    try:
        return _significant_tokens(before) == _significant_tokens(after)
    except (tokenize.TokenError, SyntaxError):
        return False


def path_rejection(path: str, targets: list[str]) -> str | None:
    """Why a file may not be changed at all in this run, or None."""
    if normalized_path(path) is None:
        return f"{path} is not a project-relative path"
    if is_test_file(path):
        return f"{path} is a test file; tests are never changed"
    if not is_inside_targets(path, targets):
        return f"{path} is outside the targets ({', '.join(targets) or 'none given'})"
    return None


def candidate_rejection(candidate: Candidate, source: SourceFile, targets: list[str]) -> str | None:
    """Why `candidate` must be dropped, or None when it is acceptable."""
    if candidate.path != source.path:
        return f"candidate is for {candidate.path}, not {source.path}"
    problem = path_rejection(candidate.path, targets)
    if problem:
        return problem
    if candidate.base_sha256 != source.sha256:
        return "candidate was made for different content than the file has"
    try:
        touched = diff_paths(candidate.diff)
        if touched - {candidate.path}:
            return f"diff edits another file: {', '.join(sorted(touched - {candidate.path}))}"
        updated = apply_unified_diff(source.content, candidate.diff, candidate.path)
    except PatchError as exc:
        return f"diff is not usable: {exc}"
    if updated == source.content:
        return "no-op change"
    problem = syntax_problem(updated)
    if problem:
        return f"changed file does not parse ({problem})"
    if only_whitespace_changed(source.content, updated):
        return "changes only whitespace"
    if syntax_problem(source.content) is None:
        dropped = defined_names(python_ast.parse(source.content)) - defined_names(
            python_ast.parse(updated)
        )
        if dropped:
            return f"drops names the file defines: {', '.join(sorted(dropped))}"
    return None


def finish_candidate(
    request: GenerateRequest,
    new_content: str,
    *,
    rationale: str,
    rules: list[str],
    kinds: list[FindingKind],
    model: str | None = None,
    tokens_used: int = 0,
) -> GenerateResult:
    """Turn an engine's new content into a validated candidate, or a rejection saying why."""
    source = request.file
    new_content = keep_file_conventions(source.content, new_content)
    diff = make_unified_diff(source.path, source.content, new_content)
    if not diff:
        return GenerateResult(candidate=None, rejection="no-op change", tokens_used=tokens_used)
    engine = request.engine
    fingerprint = hashlib.sha256(f"{source.path}\n{diff}".encode()).hexdigest()[:12]
    candidate = Candidate(
        id=f"{engine.value}-{fingerprint}",
        path=source.path,
        base_sha256=source.sha256,
        diff=diff,
        rationale=rationale,
        engine=engine,
        model=model if engine is EngineName.ollama else None,
        rules=rules,
        kinds=kinds,
    )
    rejection = candidate_rejection(candidate, source, request.targets)
    if rejection:
        return GenerateResult(candidate=None, rejection=rejection, tokens_used=tokens_used)
    return GenerateResult(candidate=candidate, tokens_used=tokens_used)
