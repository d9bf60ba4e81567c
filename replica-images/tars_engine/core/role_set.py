"""The one interface the workflow engine uses to reach the roles.

Two implementations exist: in-process (the role libraries called directly) and
HTTP (httpx against `tars-replica serve`). Nothing in the workflow knows which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tars_engine.core.models import (
    AnalysisReport,
    AnalyzeRequest,
    GenerateRequest,
    GenerateResult,
    ModelCheck,
    ModelCheckRequest,
    RoleInfo,
    SnapshotRef,
    TestRequest,
    TestResult,
)


class AnalyzerRole(Protocol):
    def info(self) -> RoleInfo: ...

    def analyze(self, request: AnalyzeRequest) -> AnalysisReport: ...

    def cancel_analysis(self, request_id: str) -> None:
        """Stop the analysis named `request_id` (its model review); nothing if not running."""
        ...


class GeneratorRole(Protocol):
    def info(self) -> RoleInfo: ...

    def generate(self, request: GenerateRequest) -> GenerateResult: ...

    def check_model(self, request: ModelCheckRequest) -> ModelCheck:
        """The model server answers and has the model; its context and speed (ollama engine)."""
        ...

    def cancel_generation(self, request_id: str) -> None:
        """Stop the generation named `request_id`; nothing if it is not running."""
        ...


class TesterRole(Protocol):
    def info(self) -> RoleInfo: ...

    def has_snapshot(self, ref: SnapshotRef) -> bool: ...

    def put_snapshot(self, run_id: str, archive: bytes) -> SnapshotRef:
        """Store a project archive (tar.gz) for the run `run_id` alone; idempotent, by content hash."""
        ...

    def run_tests(self, request: TestRequest) -> TestResult: ...

    def cancel_tests(self, request_id: str) -> None:
        """Kill the test run named `request_id` (its process group); nothing if it is not running."""
        ...


class RoleError(RuntimeError):
    """A role could not do what it was asked; the message says why in one line."""


class RoleUnavailableError(RoleError):
    """A role's endpoint did not answer (connection refused, timeout, server error)."""


class SnapshotMissingError(RoleError):
    """The tester does not hold the snapshot a test request names; put it first."""


@dataclass(frozen=True)
class RoleSet:
    """One implementation of each worker role, as the workflow receives them."""

    analyzer: AnalyzerRole
    generator: GeneratorRole
    tester: TesterRole
