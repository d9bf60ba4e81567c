"""TARS's own codemods: rewrites ruff does not make, each a rule of its own.

Each one adds a return annotation that the function's body makes certain, in the spirit
of the `autotyping` tool: `-> None` where nothing is returned (TRS101), `-> bool` where
every return is a boolean (TRS102). They are built on `ast` and `tokenize` and insert
the annotation at an exact token position, so every other byte of the file (line
endings, byte order mark, comments, layout) stays as it was.

A codemod is reported only where ruff would report the flake8-annotations rule for the
function's missing return annotation (ANN201 public, ANN202 private, ANN204 special
method, ANN205/ANN206 static and class method) and the project has not ignored it, so
the project's ignores, per-file ignores, exclusions and `# noqa` comments hold for the
codemods as they do for ruff's own findings.
"""

from __future__ import annotations

import ast
import io
import itertools
import re
import tokenize
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tars_engine.core import python_ast
from tars_engine.core.models import SourceFile
from tars_engine.core.ruff_config import RuleChoice, rule_choice, selectors_overlap
from tars_engine.core.validation import is_test_file
from tars_engine.roles import ruff_tool


@dataclass(frozen=True)
class CodemodRule:
    code: str
    annotation: str
    summary: str

    def message(self, function: str) -> str:
        return f"`{function}` {self.summary}: annotate it `-> {self.annotation}`"


# TARS's own namespace of rule codes, apart from every linter ruff knows.
CODEMOD_PREFIX = "TRS"
NONE_RETURN = CodemodRule(f"{CODEMOD_PREFIX}101", "None", "returns no value")
BOOL_RETURN = CodemodRule(f"{CODEMOD_PREFIX}102", "bool", "returns only booleans")
CODEMOD_RULES: dict[str, CodemodRule] = {rule.code: rule for rule in (NONE_RETURN, BOOL_RETURN)}

# Ruff's rules for a function without a return annotation, ANN201 to ANN206.
MISSING_RETURN_ANNOTATION = "ANN2"
STUB_SUFFIX = ".pyi"

# Decorators that hand the function's own result on and read no annotations. Any other
# may replace the function, change what it returns or read its annotations (FastAPI,
# pydantic, typer, singledispatch, overload), so a decorated function is left alone.
TRANSPARENT_DECORATORS = frozenset({"staticmethod", "classmethod", "property"})
PROPERTY_ACCESSORS = frozenset({"setter", "deleter"})
# Builtins whose result is always a bool, unless the module binds the name itself.
BOOLEAN_BUILTINS = frozenset(
    {"all", "any", "bool", "callable", "hasattr", "isinstance", "issubclass"}
)
# Scopes nested in a function: only what they evaluate where they are defined belongs to it.
NESTED_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
STAR_IMPORT = "*"
_TYPE_COMMENT = re.compile(r"#\s*type:")
_OPENING, _CLOSING = frozenset("([{"), frozenset(")]}")


@dataclass(frozen=True)
class Site:
    """Where one codemod applies: the function's name as ruff locates it, and the offset
    (into the content without its byte order mark) where the annotation goes."""

    rule: CodemodRule
    function: str
    line: int
    column: int
    offset: int


@dataclass(frozen=True)
class _Signature:
    name_line: int
    name_column: int
    end_of_parameters: int
    type_comment: bool


def _line_starts(text: str) -> list[int]:
    starts = [0]
    starts += [index + 1 for index, character in enumerate(text) if character == "\n"]
    return starts


def _ends_signature(token: tokenize.TokenInfo, depth: int) -> bool:
    return token.type == tokenize.OP and token.string == ":" and depth == 0


def _is_type_comment(token: tokenize.TokenInfo) -> bool:
    return token.type == tokenize.COMMENT and bool(_TYPE_COMMENT.match(token.string))


def _signature(tokens: list[tokenize.TokenInfo], index: int, starts: list[int]) -> _Signature:
    """The signature of the `def` at `tokens[index]`: it ends at the first colon outside
    brackets (a default's lambda or dict, or a type parameter's bound, is inside them)."""
    name = tokens[index + 1]
    depth, position, last, type_comment = 0, index + 2, name, False
    while not _ends_signature(tokens[position], depth):
        current = tokens[position]
        if current.type == tokenize.OP:
            depth += (current.string in _OPENING) - (current.string in _CLOSING)
        type_comment |= _is_type_comment(current)
        if current.type not in (tokenize.COMMENT, tokenize.NL):
            last = current
        position += 1
    # A signature's type comment stands after the colon, before the body's first token.
    for following in itertools.islice(tokens, position + 1, None):
        if following.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT):
            break
        type_comment |= _is_type_comment(following)
    row, column = last.end
    return _Signature(
        name_line=name.start[0],
        name_column=name.start[1] + 1,
        end_of_parameters=starts[row - 1] + column,
        type_comment=type_comment,
    )


def _signatures(text: str) -> dict[tuple[int, int], _Signature]:
    """Every `def`'s signature, keyed by where the statement starts (`async` included):
    line and character column, as `ast` gives them once its byte columns are converted."""
    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    starts = _line_starts(text)
    signatures = {}
    for index, token in enumerate(tokens):
        if token.type == tokenize.NAME and token.string == "def":
            previous = tokens[index - 1] if index else token
            start = previous.start if previous.string == "async" else token.start
            signatures[start] = _signature(tokens, index, starts)
    return signatures


def _children(value: object) -> list[ast.AST]:
    if isinstance(value, ast.AST):
        return [value]
    return [item for item in value if isinstance(item, ast.AST)] if isinstance(value, list) else []


def _scope_nodes(function: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[ast.AST]:
    """The nodes that run as part of `function` itself, not of a scope nested in it."""
    pending: list[ast.AST] = list(function.body)
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, NESTED_SCOPES):
            for field, value in ast.iter_fields(node):
                if field != "body":
                    pending.extend(_children(value))
        else:
            pending.extend(ast.iter_child_nodes(node))


def _bound_names(tree: ast.Module) -> frozenset[str]:
    """Every name the module binds anywhere; a star import binds `*`, i.e. anything."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            names.update(node.names)
    return frozenset(names)


def _builtin(name: str, bound: frozenset[str]) -> bool:
    return name not in bound and STAR_IMPORT not in bound


def _transparently_decorated(
    function: ast.FunctionDef | ast.AsyncFunctionDef, bound: frozenset[str]
) -> bool:
    return all(
        (isinstance(decorator, ast.Name) and decorator.id in TRANSPARENT_DECORATORS)
        and _builtin(decorator.id, bound)
        or (
            isinstance(decorator, ast.Attribute)
            and decorator.attr in PROPERTY_ACCESSORS
            and isinstance(decorator.value, ast.Name)
        )
        for decorator in function.decorator_list
    )


def _is_docstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def _is_placeholder(body: list[ast.stmt]) -> bool:
    """A body of only a docstring, `pass` or `...`: a hook or protocol member that other
    code overrides, whose return type its overrides decide."""
    return all(
        isinstance(statement, ast.Pass)
        or _is_docstring(statement)
        or (
            isinstance(statement, ast.Expr)
            and isinstance(statement.value, ast.Constant)
            and statement.value.value is Ellipsis
        )
        for statement in body
    )


def _is_boolean(expression: ast.expr, bound: frozenset[str]) -> bool:
    """Whether `expression` is a bool: a literal, a negation, a boolean builtin's call,
    `and`/`or` of those, or a comparison. `in` and `is` always answer a bool, and so do the
    rich comparisons of Python's own types; an operand whose `==` answers otherwise (a
    numpy array) makes the annotation wrong for a type checker, never at runtime."""
    if isinstance(expression, ast.Constant):
        return isinstance(expression.value, bool)
    if isinstance(expression, ast.Compare):
        return True
    if isinstance(expression, ast.UnaryOp):
        return isinstance(expression.op, ast.Not)
    if isinstance(expression, ast.BoolOp):
        return all(_is_boolean(value, bound) for value in expression.values)
    return (
        isinstance(expression, ast.Call)
        and isinstance(expression.func, ast.Name)
        and expression.func.id in BOOLEAN_BUILTINS
        and _builtin(expression.func.id, bound)
    )


def _returns_on_every_path(body: list[ast.stmt]) -> bool:
    """Whether `body` never falls off its end (judged strictly: `with` may swallow an
    exception and fall through, so only returns, raises and if/else count)."""
    last = body[-1]
    if isinstance(last, (ast.Return, ast.Raise)):
        return True
    return (
        isinstance(last, ast.If)
        and bool(last.orelse)
        and _returns_on_every_path(last.body)
        and _returns_on_every_path(last.orelse)
    )


def _certain_annotation(
    function: ast.FunctionDef | ast.AsyncFunctionDef, bound: frozenset[str]
) -> CodemodRule | None:
    """The rule whose annotation the body makes certain, or None."""
    if function.returns is not None or not _transparently_decorated(function, bound):
        return None
    nodes = list(_scope_nodes(function))
    if any(isinstance(node, (ast.Yield, ast.YieldFrom)) for node in nodes):
        return None
    returns = [node for node in nodes if isinstance(node, ast.Return)]
    if not any(node.value is not None for node in returns):
        # A body that only raises returns nothing at all (NoReturn), not None.
        if _is_placeholder(function.body) or isinstance(function.body[-1], ast.Raise):
            return None
        return NONE_RETURN
    if (
        _builtin("bool", bound)
        and all(node.value is not None and _is_boolean(node.value, bound) for node in returns)
        and _returns_on_every_path(function.body)
    ):
        return BOOL_RETURN
    return None


def _character_column(line: str, byte_column: int) -> int:
    return len(line.encode("utf-8", "surrogatepass")[:byte_column].decode("utf-8", "replace"))


def candidate_sites(path: str, content: str) -> list[Site]:
    """Where a codemod's annotation is certain in `content`, before the project's say.

    Test files and stubs are never changed; a file that does not parse, or whose lines
    end in a lone carriage return (where `ast` and `tokenize` would count lines apart),
    has no sites.
    """
    text = content.removeprefix(python_ast.BYTE_ORDER_MARK)
    if path.endswith(STUB_SUFFIX) or is_test_file(path) or "\r" in text.replace("\r\n", ""):
        return []
    try:
        tree = python_ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    bound = _bound_names(tree)
    certain = [
        (node, rule)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and (rule := _certain_annotation(node, bound)) is not None
    ]
    if not certain:
        return []
    try:
        signatures = _signatures(text)
    except (SyntaxError, tokenize.TokenError):
        return []
    lines = text.split("\n")
    sites = []
    for node, rule in certain:
        start = (node.lineno, _character_column(lines[node.lineno - 1], node.col_offset))
        signature = signatures.get(start)
        if signature is None or signature.type_comment:
            continue
        sites.append(
            Site(
                rule=rule,
                function=node.name,
                line=signature.name_line,
                column=signature.name_column,
                offset=signature.end_of_parameters,
            )
        )
    return sorted(sites, key=lambda site: site.offset)


def project_checks(choice: RuleChoice, annotation_rule: str) -> bool:
    """Whether the project's configuration leaves `annotation_rule` on: not ignored, and
    selected if the project chose its rules (TARS then adds nothing of its own)."""
    if any(selectors_overlap(annotation_rule, ignored) for ignored in choice.ignored):
        return False
    return not choice.selects or any(
        selectors_overlap(annotation_rule, selected) for selected in choice.selected
    )


def project_sites(source: SourceFile) -> list[Site]:
    """The sites the project lets TARS change: where ruff, with the project's own
    configuration, reports the missing return annotation and the project checks it.

    Raises `ruff_tool.RuffError` when ruff cannot run.
    """
    sites = candidate_sites(source.path, source.content)
    if not sites:
        return []
    # Selected on the command line, the ANN rules override the project's `ignore`, which
    # is therefore weighed here; per-file ignores, exclusions and noqa comments still hold.
    reported = {
        (diagnostic.line, diagnostic.column): diagnostic.code
        for diagnostic in ruff_tool.check_selected(source, [MISSING_RETURN_ANNOTATION])
    }
    choice = rule_choice(source.lint, source.path)
    return [
        site
        for site in sites
        if (site.line, site.column) in reported
        and project_checks(choice, reported[(site.line, site.column)])
    ]


def apply_sites(content: str, sites: Iterable[Site]) -> str:
    """`content` with each site's annotation inserted, every other byte kept."""
    prefix = python_ast.BYTE_ORDER_MARK if content.startswith(python_ast.BYTE_ORDER_MARK) else ""
    text = content.removeprefix(prefix)
    for site in sorted(sites, key=lambda site: site.offset, reverse=True):
        text = f"{text[: site.offset]} -> {site.rule.annotation}{text[site.offset :]}"
    return prefix + text


def is_codemod_rule(rule: str) -> bool:
    return rule in CODEMOD_RULES


def fix(source: SourceFile, rules: Iterable[str]) -> str:
    """The content with the codemods among `rules` applied where the project allows them."""
    wanted = {rule for rule in rules if is_codemod_rule(rule)}
    if not wanted:
        return source.content
    return apply_sites(
        source.content, [site for site in project_sites(source) if site.rule.code in wanted]
    )


def counts(source: SourceFile, rules: Iterable[str]) -> Counter[str]:
    """How many sites each codemod among `rules` has in `source`."""
    wanted = {rule for rule in rules if is_codemod_rule(rule)}
    if not wanted:
        return Counter()
    return Counter(site.rule.code for site in project_sites(source) if site.rule.code in wanted)
