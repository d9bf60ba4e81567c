"""Analyzer role: ruff findings, TARS's codemods, AST metrics and (with the ollama engine) a
model review.

A file that cannot be analysed (binary, huge, not parseable) yields a report with
`error` set; the analyzer never raises for bad content.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from tars_api.vocabulary import EngineName, Role

from tars_engine.core import python_ast
from tars_engine.core.models import (
    AnalysisReport,
    AnalyzeRequest,
    Finding,
    FindingKind,
    FindingSource,
    Location,
    RoleInfo,
    Severity,
)
from tars_engine.core.settings import ReplicaSettings
from tars_engine.roles import codemods, ruff_tool
from tars_engine.roles.model_review import ModelReviewer
from tars_engine.roles.ollama_engine import OllamaEngine

MAX_CONTENT_BYTES = 1_000_000
COMPLEXITY_THRESHOLD = 10
HIGH_COMPLEXITY_THRESHOLD = 20
FUNCTION_LENGTH_THRESHOLD = 60
LONG_FUNCTION_LENGTH_THRESHOLD = 120
MODULE_LENGTH_THRESHOLD = 1000

SEVERITY_WEIGHT: dict[Severity, float] = {
    Severity.info: 0.25,
    Severity.low: 1.0,
    Severity.medium: 3.0,
    Severity.high: 6.0,
    Severity.critical: 10.0,
}
KIND_WEIGHT: dict[FindingKind, float] = {
    FindingKind.security: 2.0,
    FindingKind.reliability: 1.8,
    FindingKind.performance: 1.3,
    FindingKind.complexity: 1.2,
    FindingKind.maintainability: 1.0,
    FindingKind.typing: 0.8,
    FindingKind.style: 0.6,
    FindingKind.documentation: 0.5,
}
# A finding the static engine can fix on its own is worth more: it is cheap to act on.
FIXABLE_BONUS = 1.5

# Longest matching prefix wins, so specific codes override their family.
RULE_CLASSES: dict[str, tuple[FindingKind, Severity]] = {
    "F": (FindingKind.reliability, Severity.medium),
    "F401": (FindingKind.maintainability, Severity.low),
    "F541": (FindingKind.style, Severity.low),
    "F811": (FindingKind.reliability, Severity.medium),
    "F841": (FindingKind.maintainability, Severity.low),
    "F82": (FindingKind.reliability, Severity.high),
    "F63": (FindingKind.reliability, Severity.high),
    "E": (FindingKind.style, Severity.low),
    "E722": (FindingKind.reliability, Severity.medium),
    "E9": (FindingKind.reliability, Severity.critical),
    "W": (FindingKind.style, Severity.info),
    "W605": (FindingKind.reliability, Severity.low),
    "B": (FindingKind.reliability, Severity.medium),
    "B006": (FindingKind.reliability, Severity.high),
    "B008": (FindingKind.reliability, Severity.high),
    "B007": (FindingKind.maintainability, Severity.low),
    "B009": (FindingKind.style, Severity.low),
    "B010": (FindingKind.style, Severity.low),
    "S": (FindingKind.security, Severity.medium),
    "S102": (FindingKind.security, Severity.high),
    "S301": (FindingKind.security, Severity.high),
    "S307": (FindingKind.security, Severity.high),
    "S602": (FindingKind.security, Severity.high),
    "S605": (FindingKind.security, Severity.high),
    "S608": (FindingKind.security, Severity.high),
    "S110": (FindingKind.reliability, Severity.low),
    "PERF": (FindingKind.performance, Severity.low),
    "UP": (FindingKind.maintainability, Severity.low),
    "SIM": (FindingKind.maintainability, Severity.low),
    "C4": (FindingKind.performance, Severity.low),
    "RET": (FindingKind.maintainability, Severity.low),
    "PIE": (FindingKind.maintainability, Severity.low),
    "D": (FindingKind.documentation, Severity.info),
    "C90": (FindingKind.complexity, Severity.medium),
    codemods.CODEMOD_PREFIX: (FindingKind.typing, Severity.low),
}


def classify_rule(code: str) -> tuple[FindingKind, Severity]:
    for length in range(len(code), 0, -1):
        if code[:length] in RULE_CLASSES:
            return RULE_CLASSES[code[:length]]
    return FindingKind.maintainability, Severity.low


def priority_score(findings: list[Finding]) -> float:
    score = sum(
        SEVERITY_WEIGHT[finding.severity]
        * KIND_WEIGHT[finding.kind]
        * (FIXABLE_BONUS if finding.fix_available else 1.0)
        for finding in findings
    )
    return round(score, 3)


@dataclass(frozen=True)
class FunctionMetrics:
    name: str
    line: int
    end_line: int
    complexity: int

    @property
    def length(self) -> int:
        return self.end_line - self.line + 1


class _ComplexityCounter(ast.NodeVisitor):
    """McCabe-style decision points of one function body, nested functions excluded."""

    def __init__(self) -> None:
        self.decisions = 0

    def count(self, function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
        for statement in function.body:
            self.visit(statement)
        return self.decisions + 1

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        """Nested functions are measured on their own."""

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        """Nested functions are measured on their own."""

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        """Methods of nested classes are measured on their own."""

    def _branch(self, node: ast.AST) -> None:
        self.decisions += 1
        self.generic_visit(node)

    visit_If = visit_For = visit_AsyncFor = visit_While = visit_IfExp = _branch
    visit_ExceptHandler = visit_match_case = _branch

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        self.decisions += len(node.values) - 1
        self.generic_visit(node)

    def visit_comprehension(self, node: ast.comprehension) -> None:
        self.decisions += 1 + len(node.ifs)
        self.generic_visit(node)


def function_metrics(tree: ast.Module) -> list[FunctionMetrics]:
    measured = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            measured.append(
                FunctionMetrics(
                    name=node.name,
                    line=node.lineno,
                    end_line=node.end_lineno or node.lineno,
                    complexity=_ComplexityCounter().count(node),
                )
            )
    return sorted(measured, key=lambda metrics: metrics.line)


def _metric_finding(
    rule: str, kind: FindingKind, severity: Severity, message: str, location: Location
) -> Finding:
    return Finding(
        kind=kind,
        severity=severity,
        source=FindingSource.metrics,
        rule=rule,
        message=message,
        location=location,
    )


def metric_findings(functions: list[FunctionMetrics], line_count: int) -> list[Finding]:
    findings = []
    for function in functions:
        location = Location(line=function.line, end_line=function.end_line)
        if function.complexity > COMPLEXITY_THRESHOLD:
            findings.append(
                _metric_finding(
                    "complexity",
                    FindingKind.complexity,
                    Severity.high
                    if function.complexity > HIGH_COMPLEXITY_THRESHOLD
                    else Severity.medium,
                    f"`{function.name}` has cyclomatic complexity {function.complexity} "
                    f"(threshold {COMPLEXITY_THRESHOLD})",
                    location,
                )
            )
        if function.length > FUNCTION_LENGTH_THRESHOLD:
            findings.append(
                _metric_finding(
                    "function-length",
                    FindingKind.maintainability,
                    Severity.medium
                    if function.length > LONG_FUNCTION_LENGTH_THRESHOLD
                    else Severity.low,
                    f"`{function.name}` is {function.length} lines long "
                    f"(threshold {FUNCTION_LENGTH_THRESHOLD})",
                    location,
                )
            )
    if line_count > MODULE_LENGTH_THRESHOLD:
        findings.append(
            _metric_finding(
                "module-length",
                FindingKind.maintainability,
                Severity.low,
                f"module is {line_count} lines long (threshold {MODULE_LENGTH_THRESHOLD})",
                Location(line=1),
            )
        )
    return findings


def ruff_findings(diagnostics: list[ruff_tool.RuffDiagnostic]) -> list[Finding]:
    findings = []
    for diagnostic in diagnostics:
        kind, severity = classify_rule(diagnostic.code)
        findings.append(
            Finding(
                kind=kind,
                severity=severity,
                source=FindingSource.ruff,
                rule=diagnostic.code,
                message=diagnostic.message,
                location=Location(
                    line=diagnostic.line,
                    column=diagnostic.column,
                    end_line=diagnostic.end_line,
                    end_column=diagnostic.end_column,
                ),
                fix_available=diagnostic.fix_available,
                fix_safe=diagnostic.fix_safe,
            )
        )
    return findings


def codemod_findings(sites: list[codemods.Site]) -> list[Finding]:
    findings = []
    for site in sites:
        kind, severity = classify_rule(site.rule.code)
        findings.append(
            Finding(
                kind=kind,
                severity=severity,
                source=FindingSource.codemod,
                rule=site.rule.code,
                message=site.rule.message(site.function),
                location=Location(line=site.line, column=site.column),
                fix_available=True,
                fix_safe=True,
            )
        )
    return findings


def unanalysable_reason(content: str) -> str | None:
    """Why content is not a Python file the engine should touch, or None."""
    size = len(content.encode("utf-8", errors="surrogatepass"))
    if size > MAX_CONTENT_BYTES:
        return f"file is too large to analyse ({size} bytes, limit {MAX_CONTENT_BYTES})"
    if "\x00" in content:
        return "file looks binary (contains NUL bytes)"
    try:
        python_ast.parse(content)
    except SyntaxError as exc:
        return f"syntax error at line {exc.lineno}: {exc.msg}"
    except ValueError as exc:
        return f"not parseable: {exc}"
    return None


class Analyzer:
    """The analyzer role in-process."""

    def __init__(
        self, settings: ReplicaSettings | None = None, reviewer: ModelReviewer | None = None
    ) -> None:
        self.settings = settings or ReplicaSettings.from_env()
        self._reviewer = reviewer

    def info(self) -> RoleInfo:
        capabilities = ["ruff", "codemods", "ast-metrics", "priority"]
        if self.settings.engine is EngineName.ollama:
            capabilities.append("model-review")
        return self.settings.role_info(Role.analyzer, capabilities)

    def _model_reviewer(self) -> ModelReviewer:
        if self._reviewer is None:
            self._reviewer = OllamaEngine(self.settings)
        return self._reviewer

    def cancel_analysis(self, request_id: str) -> None:
        """Stop the model's review for `request_id`, or the one it has yet to start."""
        if self.settings.engine is EngineName.ollama or self._reviewer is not None:
            self._model_reviewer().cancel(request_id)

    def analyze(self, request: AnalyzeRequest) -> AnalysisReport:
        path, content = request.file.path, request.file.content
        reason = unanalysable_reason(content)
        if reason is not None:
            return AnalysisReport(path=path, findings=[], priority=0, error=reason)
        notes: list[str] = []
        line_count = content.count("\n") + (0 if content.endswith("\n") or not content else 1)
        functions = function_metrics(python_ast.parse(content))
        findings = metric_findings(functions, line_count)
        try:
            findings = ruff_findings(ruff_tool.check(request.file)) + findings
        except ruff_tool.RuffError as exc:
            notes.append(f"ruff findings unavailable: {exc}")
        try:
            findings = codemod_findings(codemods.project_sites(request.file)) + findings
        except ruff_tool.RuffError as exc:
            notes.append(f"codemod findings unavailable: {exc}")
        tokens_used = 0
        if request.engine is EngineName.ollama:
            outcome = self._model_reviewer().review(
                request.file, findings, request.model, request.request_id
            )
            findings = findings + outcome.findings
            tokens_used = outcome.tokens_used
            if outcome.note:
                notes.append(outcome.note)
        findings.sort(key=lambda finding: (finding.location.line, finding.location.column))
        metrics: dict[str, float] = {
            "lines": line_count,
            "functions": len(functions),
            "max_complexity": max((f.complexity for f in functions), default=0),
            "mean_complexity": round(sum(f.complexity for f in functions) / len(functions), 2)
            if functions
            else 0,
            "max_function_length": max((f.length for f in functions), default=0),
        }
        return AnalysisReport(
            path=path,
            findings=findings,
            metrics=metrics,
            priority=priority_score(findings),
            notes=notes,
            tokens_used=tokens_used,
        )
