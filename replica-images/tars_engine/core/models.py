"""Wire types shared by the four roles, in-process and over HTTP.

Every request and answer that crosses a role boundary is one of these models, so
the in-process and HTTP implementations of a role cannot drift apart.
"""

from __future__ import annotations

import enum
import hashlib
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from tars_api.run import TestEnvironment
from tars_api.vocabulary import (
    DEFAULT_MODEL,
    ENV_NAME_PATTERN,
    EngineName,
    Role,
    SandboxMode,
)


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FindingKind(str, enum.Enum):
    style = "style"
    complexity = "complexity"
    performance = "performance"
    security = "security"
    reliability = "reliability"
    maintainability = "maintainability"
    documentation = "documentation"
    typing = "typing"


class Severity(str, enum.Enum):
    info = "info"
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


class FindingSource(str, enum.Enum):
    ruff = "ruff"
    metrics = "metrics"
    model = "model"
    codemod = "codemod"

    @property
    def fixed_statically(self) -> bool:
        """Whether the static engine holds the fixer for this source's fixable findings."""
        return self in (FindingSource.ruff, FindingSource.codemod)


class Location(WireModel):
    line: int = Field(ge=1)
    column: int = Field(default=1, ge=1)
    end_line: int | None = Field(default=None, ge=1)
    end_column: int | None = Field(default=None, ge=1)


class Finding(WireModel):
    kind: FindingKind
    severity: Severity
    source: FindingSource
    rule: str = Field(
        description="ruff code (F401), codemod code (TRS101), metric name (complexity) or "
        "'model-review'"
    )
    message: str
    location: Location
    fix_available: bool = False
    fix_safe: bool = False


class ProjectFile(WireModel):
    path: str = Field(description="project-relative POSIX path")
    content: str


class LintContext(WireModel):
    """What ruff reads of the project besides the file itself, so that a role without the
    project checks the file as `ruff check` in the project would."""

    configs: list[ProjectFile] = Field(
        default_factory=list,
        description="pyproject.toml, ruff.toml and .ruff.toml from the file's directory up to "
        "the project root, and the files they extend",
    )
    layout: list[str] = Field(
        default_factory=list,
        description="paths that exist in the project (a directory ends in /), for ruff's "
        "package and first-party detection: the __init__.py of the file's directory and its "
        "ancestors, and the modules at the top of the source roots",
    )


class SourceFile(WireModel):
    """One file's content, sent by the coordinator, which alone owns the workspace."""

    path: str = Field(description="project-relative POSIX path")
    content: str
    lint: LintContext = Field(default_factory=LintContext)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()

    def with_content(self, content: str) -> SourceFile:
        """The same file, under the same project rules, holding `content`."""
        return self.model_copy(update={"content": content})


class AnalyzeRequest(WireModel):
    file: SourceFile
    engine: EngineName = EngineName.static
    model: str = DEFAULT_MODEL
    request_id: str | None = Field(
        default=None, max_length=64, description="names the analysis, so a stop can cancel it"
    )


class AnalysisReport(WireModel):
    path: str
    findings: list[Finding]
    metrics: dict[str, float] = Field(default_factory=dict)
    priority: float = Field(ge=0)
    error: str | None = Field(default=None, description="why the file could not be analysed")
    notes: list[str] = Field(
        default_factory=list, description="what was partly unavailable, e.g. the model review"
    )
    tokens_used: int = Field(default=0, ge=0, description="model tokens spent on the review")


class LearnedExample(WireModel):
    """A change that passed its tests before, used as a few-shot example."""

    rule: str
    kind: FindingKind
    diff: str


class GenerateRequest(WireModel):
    file: SourceFile
    findings: list[Finding]
    targets: list[str] = Field(
        description="project-relative directories the change must stay inside"
    )
    engine: EngineName = EngineName.static
    model: str = DEFAULT_MODEL
    allow_unsafe_fixes: bool = False
    examples: list[LearnedExample] = Field(default_factory=list)
    rules: list[str] | None = Field(
        default=None,
        description="the static engine fixes only these of the findings' rules; None: all of them",
    )
    attempt: int = Field(default=1, ge=1)
    feedback: str | None = Field(default=None, description="why the previous attempt failed")
    max_tokens: int | None = Field(default=None, ge=1)
    request_id: str | None = Field(
        default=None, max_length=64, description="names the generation, so a stop can cancel it"
    )


class ModelCheckRequest(WireModel):
    model: str | None = Field(
        default=None, min_length=1, description="None: the model the replica is configured with"
    )


class ModelCheck(WireModel):
    """A generator's preflight of its model server: what a run learns before any work."""

    model: str
    problem: str | None = Field(default=None, description="one line naming the fix; None: ok")
    server_version: str | None = None
    context_length: int | None = Field(default=None, description="the model's own limit")
    num_ctx: int | None = Field(default=None, description="the context every request uses")
    tokens_per_second: float | None = None
    prompt_tokens_per_second: float | None = None


class Candidate(WireModel):
    id: str
    path: str
    base_sha256: str = Field(description="sha256 of the content the diff applies to")
    diff: str = Field(description="unified diff touching only `path`")
    rationale: str
    engine: EngineName
    model: str | None = None
    rules: list[str] = Field(default_factory=list)
    kinds: list[FindingKind] = Field(default_factory=list)


class DropCause(str, enum.Enum):
    unfixable_follow_up = "unfixable-follow-up"
    """Its fix introduces a finding this run cannot fix: the candidate is built without it."""
    tests_failed = "tests-failed"
    """The project's tests fail with its fix: bisecting the file's rules found it."""


class DroppedRule(WireModel):
    """A rule left out of a file's change, and why."""

    rule: str
    cause: DropCause
    reason: str = Field(description="one line: what its fix did")


class GenerateResult(WireModel):
    candidate: Candidate | None
    rejection: str | None = Field(default=None, description="why no candidate was produced")
    dropped_rules: list[DroppedRule] = Field(
        default_factory=list, description="rules left out of the candidate (or of the file)"
    )
    tokens_used: int = 0


# Run and request ids go into paths and URLs: letters, digits and dashes only.
ID_PATTERN = r"^[0-9a-zA-Z-]{1,64}$"
EnvName = Annotated[str, Field(pattern=ENV_NAME_PATTERN)]


class SnapshotRef(WireModel):
    run_id: str = Field(
        pattern=ID_PATTERN, description="the run the snapshot belongs to; no other run sees it"
    )
    digest: str = Field(description="sha256 of the snapshot archive")


class SandboxUse(WireModel):
    """How one test run was isolated, as its status and report show it."""

    mode: SandboxMode = Field(description="what the run asked for")
    isolated: bool = Field(description="the command ran inside bwrap")
    network: bool = Field(description="the command could reach the network")
    detail: str = Field(description="one line: what held the command, or why nothing did")
    refused: bool = Field(
        default=False, description="`required` and no working bwrap: the command did not run"
    )


class EnvironmentUse(WireModel):
    """What one test run ran in: a virtualenv made for it now or found in the tester's cache,
    or the test image's own interpreter."""

    digest: str = Field(
        description="what identifies it: the sha256 of the project's dependency files and the "
        "settings, or the test image's reference"
    )
    reused: bool = Field(description="made by an earlier run with the same digest")
    seconds: float = Field(ge=0, description="how long making it took (or failing to)")
    detail: str = Field(description="one line: what made it, or why it could not be made")
    failed: bool = Field(default=False, description="the setup failed: no test ran")


class TestRequest(WireModel):
    __test__ = False  # not a pytest class

    snapshot: SnapshotRef
    candidates: list[Candidate] = Field(
        description="applied in order to a fresh copy of the snapshot"
    )
    test_command: list[str] | None = Field(
        default=None, description="None: detect (pytest when present)"
    )
    timeout_seconds: float = Field(default=600, gt=0)
    request_id: str | None = Field(
        default=None,
        pattern=ID_PATTERN,
        description="names the test run, so the coordinator can cancel it",
    )
    sandbox: SandboxMode = SandboxMode.auto
    network: bool = Field(default=False, description="let the test command reach the network")
    env_names: list[EnvName] = Field(
        default_factory=list,
        description="variables of the tester's environment passed on to the test command",
    )
    environment: TestEnvironment | None = Field(
        default=None, description="None: the tester's own interpreter runs the tests"
    )

    @property
    def longest_seconds(self) -> float:
        """How long the tester may take: the tests, and making their environment first."""
        setup = self.environment.setup_seconds if self.environment else 0
        return self.timeout_seconds + setup


class TestResult(WireModel):
    __test__ = False

    passed: bool
    command: list[str]
    tests_run: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    executed: int = Field(default=0, description="tests that ran: not skipped, not deselected")
    executed_digest: str | None = Field(
        default=None,
        description="sha256 of the sorted ids of the tests that ran: the same set, the same digest",
    )
    duration_seconds: float = 0
    timed_out: bool = False
    output: str = Field(default="", description="trimmed output of the test command")
    apply_error: str | None = Field(
        default=None, description="a candidate did not apply to the snapshot"
    )
    sandbox: SandboxUse | None = Field(default=None, description="None: no command was run")
    environment: EnvironmentUse | None = Field(
        default=None, description="None: the tester's own interpreter ran the tests"
    )
    unproven: str | None = Field(
        default=None,
        description="set by the gate: the test command passed, but proves nothing, and why",
    )


class RoleInfo(WireModel):
    role: Role
    engine: EngineName
    model: str
    capabilities: list[str]
    version: str
