"""The worker roles over HTTP: httpx clients of `tars-replica serve`, same interface as in-process.

Transport failures and server errors become `RoleUnavailableError`; a request the
role refused (4xx) becomes `RoleError` with the server's reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TypeVar

import httpx
from pydantic import BaseModel

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
from tars_engine.core.role_set import RoleError, RoleUnavailableError, SnapshotMissingError

CONNECT_TIMEOUT_SECONDS = 5.0
# Told of every request sent: (role name, base URL, operation), e.g. for per-endpoint metrics.
RequestObserver = Callable[[str, str, str], None]
# Slack over a test run's own timeout for extraction, applying and the round trip.
TEST_TIMEOUT_MARGIN_SECONDS = 120.0

ModelT = TypeVar("ModelT", bound=BaseModel)


def _reason(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    return str(detail) if detail else (response.text.strip()[:300] or response.reason_phrase)


class HttpRole:
    """Shared transport: one httpx client per role endpoint, safe to use from many threads."""

    role_name = "role"
    timeout_seconds = 120.0

    def __init__(self, base_url: str, *, observer: RequestObserver | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._observer = observer
        self._client = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(self.timeout_seconds, connect=CONNECT_TIMEOUT_SECONDS),
        )

    def close(self) -> None:
        self._client.close()

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        where = f"{self.role_name} at {self.base_url}"
        if self._observer is not None:
            self._observer(self.role_name, self.base_url, f"{method} {path}")
        try:
            response = self._client.request(
                method,
                path,
                json=json,
                content=content,
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_SECONDS)
                if timeout
                else self._client.timeout,
            )
        except httpx.TimeoutException as exc:
            raise RoleUnavailableError(f"{where} timed out on {method} {path}: {exc!r}") from exc
        except httpx.TransportError as exc:
            raise RoleUnavailableError(f"{where} is unreachable: {exc}") from exc
        if response.status_code >= 500:
            raise RoleUnavailableError(
                f"{where} failed {method} {path}: {response.status_code} {_reason(response)}"
            )
        return response

    def _call(self, path: str, payload: BaseModel, answer: type[ModelT]) -> ModelT:
        response = self._send("POST", path, json=payload.model_dump(mode="json"))
        self._raise_for_refusal(response, f"POST {path}")
        return answer.model_validate(response.json())

    def _raise_for_refusal(self, response: httpx.Response, operation: str) -> None:
        if response.status_code >= 400:
            raise RoleError(
                f"{self.role_name} at {self.base_url} refused {operation}: "
                f"{response.status_code} {_reason(response)}"
            )

    def info(self) -> RoleInfo:
        response = self._send("GET", "/info")
        self._raise_for_refusal(response, "GET /info")
        return RoleInfo.model_validate(response.json())


class HttpAnalyzer(HttpRole):
    role_name = "analyzer"

    def analyze(self, request: AnalyzeRequest) -> AnalysisReport:
        return self._call("/v1/analyze", request, AnalysisReport)

    def cancel_analysis(self, request_id: str) -> None:
        response = self._send("DELETE", f"/v1/analyze/{request_id}")
        self._raise_for_refusal(response, "DELETE /v1/analyze")


class HttpGenerator(HttpRole):
    role_name = "generator"
    # A model writing a whole file can take minutes on a CPU-only node.
    timeout_seconds = 900.0

    def generate(self, request: GenerateRequest) -> GenerateResult:
        return self._call("/v1/generate", request, GenerateResult)

    def check_model(self, request: ModelCheckRequest) -> ModelCheck:
        return self._call("/v1/model-check", request, ModelCheck)

    def cancel_generation(self, request_id: str) -> None:
        response = self._send("DELETE", f"/v1/generate/{request_id}")
        self._raise_for_refusal(response, "DELETE /v1/generate")


class HttpTester(HttpRole):
    role_name = "tester"

    def has_snapshot(self, ref: SnapshotRef) -> bool:
        response = self._send("HEAD", f"/v1/runs/{ref.run_id}/snapshots/{ref.digest}")
        if response.status_code == 404:
            return False
        self._raise_for_refusal(response, "HEAD /v1/snapshots")
        return True

    def put_snapshot(self, run_id: str, archive: bytes) -> SnapshotRef:
        digest = hashlib.sha256(archive).hexdigest()
        response = self._send(
            "PUT",
            f"/v1/runs/{run_id}/snapshots/{digest}",
            content=archive,
            headers={"Content-Type": "application/gzip"},
        )
        self._raise_for_refusal(response, "PUT /v1/snapshots")
        return SnapshotRef.model_validate(response.json())

    def run_tests(self, request: TestRequest) -> TestResult:
        response = self._send(
            "POST",
            "/v1/test",
            json=request.model_dump(mode="json"),
            timeout=request.longest_seconds + TEST_TIMEOUT_MARGIN_SECONDS,
        )
        if response.status_code == 404:
            raise SnapshotMissingError(_reason(response))
        self._raise_for_refusal(response, "POST /v1/test")
        return TestResult.model_validate(response.json())

    def cancel_tests(self, request_id: str) -> None:
        response = self._send("DELETE", f"/v1/test/{request_id}")
        self._raise_for_refusal(response, "DELETE /v1/test")
