"""The coordinator's run API: how the operator hands it a SelfCodingRun and mirrors its progress.

Routes (served by `tars-replica serve --role coordinator`, see `coordinator_service`):

- `POST /v1/runs` with a `RunAssignment` -> 202 `RunReport`. Idempotent by uid: assigning
  a run the coordinator already has returns its current report. The assignment's
  checkpoint (the last `RunReport.checkpoint` the operator saw) lets a new coordinator
  resume a run whose previous coordinator died, without applying anything twice.
- `GET /v1/runs/{uid}` -> `RunReport`; 404 when the coordinator does not have the run
  (it restarted): the operator assigns it again with its checkpoint.
- `POST /v1/runs/{uid}/stop` -> `RunReport`; the run ends Stopped within seconds (a test
  run under way is killed), keeping what was accepted.
- `GET /v1/runs/{uid}/patch` -> text/x-diff: the accepted improvements, for `git apply`.
- `GET /v1/runs/{uid}/report` -> `RunResults`: per-file results, statistics, skipped files.

Bodies are camelCase JSON, like the Kubernetes objects they come from and feed.
"""

from __future__ import annotations

from typing import Self

import httpx
from pydantic import Field
from tars_api.meta import ApiModel
from tars_api.run import RunStatistics, SelfCodingRunSpec, SelfCodingRunStatus

from tars_engine.core.selection import SkippedFile
from tars_engine.core.state import FileRecord, WorkflowState

RUNS_PATH = "/v1/runs"
PATCH_MEDIA_TYPE = "text/x-diff"
CLIENT_TIMEOUT_SECONDS = 30.0


def run_path(uid: str, action: str = "") -> str:
    return f"{RUNS_PATH}/{uid}" + (f"/{action}" if action else "")


class RunAssignment(ApiModel):
    """A SelfCodingRun handed to a coordinator."""

    namespace: str = Field(min_length=1, description="The run's namespace (sources are read there)")
    name: str = Field(min_length=1, description="The run's name (names the git branch)")
    uid: str = Field(min_length=1, description="metadata.uid: the run's identity")
    spec: SelfCodingRunSpec
    checkpoint: WorkflowState | None = Field(
        default=None, description="The last state reported for this run, to resume from"
    )


class RunReport(ApiModel):
    """Where a run stands; `status` is ready to copy into the SelfCodingRun's status."""

    uid: str
    status: SelfCodingRunStatus = Field(
        description="phase, stage, currentFile, progress, statistics, latestResults, "
        "startTime, completionTime, branch (conditions are the operator's)"
    )
    message: str = Field(default="", description="One line: what happened last, or why it ended")
    finished: bool = Field(default=False, description="The run has ended; nothing will change")
    checkpoint: WorkflowState | None = Field(
        default=None, description="The workflow's state; None until the workflow has started"
    )


class TestRunsPerChange(ApiModel):
    __test__ = False  # not a pytest class

    test_runs: int = Field(ge=0)
    accepted_changes: int = Field(ge=0)


class RunResults(ApiModel):
    """The full report of a run: every selected file, what was skipped, what it cost."""

    uid: str
    name: str
    phase: str | None
    message: str
    branch: str | None = None
    pushed: bool | None = Field(
        default=None, description="git source with autoApply: whether the branch was pushed"
    )
    statistics: RunStatistics
    files: list[FileRecord]
    skipped: list[SkippedFile]
    test_runs_per_change: TestRunsPerChange


class CoordinatorApiError(RuntimeError):
    """The coordinator refused a request or could not be reached; the message says which."""


class RunNotFoundError(CoordinatorApiError):
    """The coordinator does not have this run (it restarted); assign it again."""


class CoordinatorClient:
    """An httpx client of the run API, for the operator and the CLI."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_seconds: float = CLIENT_TIMEOUT_SECONDS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url, timeout=timeout_seconds, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _request(self, method: str, path: str, *, json: object = None) -> httpx.Response:
        try:
            response = self._client.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise CoordinatorApiError(f"coordinator at {self.base_url} unreachable: {exc}") from exc
        if response.status_code == 404:
            raise RunNotFoundError(f"coordinator at {self.base_url}: {method} {path}: not found")
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text[:300]
            raise CoordinatorApiError(
                f"coordinator at {self.base_url} refused {method} {path}: "
                f"{response.status_code} {detail}"
            )
        return response

    def assign(self, assignment: RunAssignment) -> RunReport:
        response = self._request("POST", RUNS_PATH, json=assignment.to_dict())
        return RunReport.model_validate(response.json())

    def report(self, uid: str) -> RunReport:
        return RunReport.model_validate(self._request("GET", run_path(uid)).json())

    def stop(self, uid: str) -> RunReport:
        return RunReport.model_validate(self._request("POST", run_path(uid, "stop")).json())

    def patch(self, uid: str) -> str:
        return self._request("GET", run_path(uid, "patch")).text

    def results(self, uid: str) -> RunResults:
        return RunResults.model_validate(self._request("GET", run_path(uid, "report")).json())
