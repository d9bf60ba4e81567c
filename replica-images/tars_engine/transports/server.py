"""The replica server: one FastAPI app per role, around that role's `RoleService`.

Every role serves GET /healthz, GET /info and GET /metrics; a role's own endpoints come
from its `RoleService`. The worker roles' services are here; the coordinator's is in
`tars_engine.cluster.coordinator_service`, and `tars_engine.replica` (the `tars-replica`
command) chooses among all four.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from tars_api.vocabulary import Role

from tars_engine.core.models import (
    ID_PATTERN,
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
from tars_engine.core.role_set import SnapshotMissingError
from tars_engine.core.settings import ReplicaSettings
from tars_engine.core.snapshot import SnapshotError
from tars_engine.roles.analyzer import Analyzer
from tars_engine.roles.generator import Generator
from tars_engine.roles.tester import Tester

STARTUP_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class RoleService:
    """A role's own endpoints and what its /info reports."""

    router: APIRouter
    info: Callable[[], RoleInfo]
    metrics: tuple[Collector, ...] = ()
    """The role's own metrics, served on /metrics next to the request counters."""


def analyzer_service(settings: ReplicaSettings) -> RoleService:
    analyzer = Analyzer(settings)
    router = APIRouter(prefix="/v1", tags=["analyzer"])

    @router.post("/analyze", name="analyze")
    def analyze(request: AnalyzeRequest) -> AnalysisReport:
        return analyzer.analyze(request)

    @router.delete("/analyze/{request_id}", name="cancel_analysis", status_code=204)
    def cancel_analysis(request_id: str) -> Response:
        analyzer.cancel_analysis(request_id)
        return Response(status_code=204)

    return RoleService(router=router, info=analyzer.info)


def generator_service(settings: ReplicaSettings) -> RoleService:
    generator = Generator(settings)
    router = APIRouter(prefix="/v1", tags=["generator"])

    @router.post("/generate", name="generate")
    def generate(request: GenerateRequest) -> GenerateResult:
        return generator.generate(request)

    @router.post("/model-check", name="check_model")
    def check_model(request: ModelCheckRequest) -> ModelCheck:
        return generator.check_model(request)

    @router.delete("/generate/{request_id}", name="cancel_generation", status_code=204)
    def cancel_generation(request_id: str) -> Response:
        generator.cancel_generation(request_id)
        return Response(status_code=204)

    return RoleService(router=router, info=generator.info)


def tester_service(settings: ReplicaSettings) -> RoleService:
    tester = Tester(settings)
    router = APIRouter(prefix="/v1", tags=["tester"])

    def ref_for(run_id: str, digest: str) -> SnapshotRef:
        if not re.fullmatch(ID_PATTERN, run_id):
            raise HTTPException(status_code=400, detail=f"not a run id: {run_id!r}")
        ref = SnapshotRef(run_id=run_id, digest=digest)
        try:
            tester.has_snapshot(ref)
        except SnapshotMissingError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        return ref

    @router.head("/runs/{run_id}/snapshots/{digest}", name="has_snapshot")
    def has_snapshot(run_id: str, digest: str) -> Response:
        return Response(status_code=200 if tester.has_snapshot(ref_for(run_id, digest)) else 404)

    @router.put("/runs/{run_id}/snapshots/{digest}", name="put_snapshot")
    async def put_snapshot(run_id: str, digest: str, request: Request) -> SnapshotRef:
        ref_for(run_id, digest)
        archive = await request.body()
        actual = hashlib.sha256(archive).hexdigest()
        if actual != digest:
            raise HTTPException(status_code=400, detail=f"body has sha256 {actual}, not {digest}")
        try:
            # Extraction checks read the whole archive: keep them off the event loop.
            return await run_in_threadpool(tester.put_snapshot, run_id, archive)
        except SnapshotError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc

    @router.post("/test", name="run_tests")
    def run_tests(request: TestRequest) -> TestResult:
        try:
            return tester.run_tests(request)
        except SnapshotMissingError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc

    @router.delete("/test/{request_id}", name="cancel_tests", status_code=204)
    def cancel_tests(request_id: str) -> Response:
        tester.cancel_tests(request_id)
        return Response(status_code=204)

    return RoleService(router=router, info=tester.info)


WORKER_SERVICES: dict[Role, Callable[[ReplicaSettings], RoleService]] = {
    Role.analyzer: analyzer_service,
    Role.generator: generator_service,
    Role.tester: tester_service,
}


def role_app(role: Role, service: RoleService, settings: ReplicaSettings) -> FastAPI:
    """The HTTP API of one role: its service plus /healthz, /info and /metrics."""
    app = FastAPI(title=f"TARS {role.value} replica", version=service.info().version)
    registry = CollectorRegistry()
    requests_total = Counter(
        "tars_replica_requests_total",
        "Requests served, by operation and status code",
        ["role", "operation", "status"],
        registry=registry,
    )
    durations = Histogram(
        "tars_replica_request_duration_seconds",
        "Request durations, by operation",
        ["role", "operation"],
        registry=registry,
        buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    )

    for collector in service.metrics:
        registry.register(collector)

    @app.middleware("http")
    async def measure(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        operation = getattr(route, "name", None) or "unmatched"
        requests_total.labels(role.value, operation, str(response.status_code)).inc()
        durations.labels(role.value, operation).observe(time.perf_counter() - started)
        return response

    @app.get("/healthz", name="healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "role": role.value}

    @app.get("/info", name="info")
    def info() -> RoleInfo:
        return service.info()

    @app.get("/metrics", name="metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(service.router)
    app.state.settings = settings
    return app


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` with uvicorn on a background thread; yields the base URL (port 0: a free one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"uvicorn did not start on {host}:{sock.getsockname()[1]}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=STARTUP_TIMEOUT_SECONDS)
        sock.close()
