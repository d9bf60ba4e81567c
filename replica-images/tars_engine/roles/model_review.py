"""A model's review of one file, as the analyzer asks for it and an engine gives it.

The analyzer depends on `ModelReviewer`, the ollama engine implements it; both
import this module, so neither needs the other's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tars_engine.core.models import Finding, SourceFile


@dataclass(frozen=True)
class ModelReviewOutcome:
    findings: list[Finding]
    tokens_used: int = 0
    note: str | None = None


class ModelReviewer(Protocol):
    def review(
        self, file: SourceFile, findings: list[Finding], model: str, request_id: str | None
    ) -> ModelReviewOutcome: ...

    def cancel(self, request_id: str) -> None: ...
