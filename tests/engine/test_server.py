"""The worker roles over real HTTP: uvicorn on loopback, httpx clients, and `tars-replica serve`."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tars_api.vocabulary import EngineName, Role
from tars_engine.core import role_set as roles
from tars_engine.core.models import (
    AnalyzeRequest,
    GenerateRequest,
    SnapshotRef,
    SourceFile,
    TestRequest,
)
from tars_engine.core.role_set import (
    AnalyzerRole,
    GeneratorRole,
    RoleError,
    RoleUnavailableError,
    SnapshotMissingError,
)
from tars_engine.core.settings import ReplicaSettings
from tars_engine.core.snapshot import pack_project
from tars_engine.replica import cli, create_app
from tars_engine.roles.analyzer import Analyzer
from tars_engine.roles.generator import Generator
from tars_engine.transports.http_client import HttpAnalyzer, HttpGenerator, HttpTester
from tars_engine.transports.server import serve_in_thread
from typer.testing import CliRunner

from tests.harness.projects import CALC, calc_project, tree_hashes


@pytest.fixture
def settings(tmp_path: Path) -> ReplicaSettings:
    return ReplicaSettings(scratch_dir=tmp_path / "scratch")


@pytest.fixture
def analyzer_url(settings: ReplicaSettings) -> Iterator[str]:
    with serve_in_thread(create_app(Role.analyzer, settings)) as url:
        yield url


@pytest.fixture
def generator_url(settings: ReplicaSettings) -> Iterator[str]:
    with serve_in_thread(create_app(Role.generator, settings)) as url:
        yield url


@pytest.fixture
def tester_url(settings: ReplicaSettings) -> Iterator[str]:
    with serve_in_thread(create_app(Role.tester, settings)) as url:
        yield url


def test_analyzer_over_http_matches_in_process(analyzer_url: str) -> None:
    analyzer: AnalyzerRole = HttpAnalyzer(analyzer_url)
    request = AnalyzeRequest(file=SourceFile(path="pkg/calc.py", content=CALC))
    assert analyzer.analyze(request) == Analyzer().analyze(request)
    info = analyzer.info()
    assert (info.role, info.engine) == (Role.analyzer, EngineName.static)
    broken = analyzer.analyze(AnalyzeRequest(file=SourceFile(path="x.py", content="def (")))
    assert broken.error is not None


def test_generator_over_http_matches_in_process(generator_url: str) -> None:
    generator: GeneratorRole = HttpGenerator(generator_url)
    source = SourceFile(path="pkg/calc.py", content=CALC)
    findings = Analyzer().analyze(AnalyzeRequest(file=source)).findings
    request = GenerateRequest(file=source, findings=findings, targets=["pkg"])
    remote = generator.generate(request)
    assert remote.candidate is not None
    assert remote == Generator().generate(request)
    refused = generator.generate(request.model_copy(update={"targets": ["elsewhere"]}))
    assert refused.candidate is None and "outside the targets" in (refused.rejection or "")
    assert generator.info().role is Role.generator


def test_tester_over_http_snapshots_and_runs(tester_url: str, tmp_path: Path) -> None:
    tester: roles.TesterRole = HttpTester(tester_url)
    project = calc_project(tmp_path / "p")
    before = tree_hashes(project, leave_out={".git"})
    archive = pack_project(project)
    ref = SnapshotRef(run_id="run-a", digest=hashlib.sha256(archive).hexdigest())
    assert not tester.has_snapshot(ref)
    assert tester.put_snapshot("run-a", archive) == ref
    assert tester.has_snapshot(ref)
    # Another run does not see this run's snapshot.
    assert not tester.has_snapshot(ref.model_copy(update={"run_id": "run-b"}))

    result = tester.run_tests(TestRequest(snapshot=ref, candidates=[], timeout_seconds=120))
    assert result.passed and result.tests_run == 3, result.output
    assert tree_hashes(project, leave_out={".git"}) == before

    with pytest.raises(SnapshotMissingError):
        tester.run_tests(
            TestRequest(snapshot=SnapshotRef(run_id="run-a", digest="1" * 64), candidates=[])
        )
    with pytest.raises(RoleError, match="not a readable tar.gz"):
        tester.put_snapshot("run-a", b"garbage")


def test_snapshot_body_must_match_its_digest(tester_url: str) -> None:
    response = httpx.put(f"{tester_url}/v1/runs/run-a/snapshots/{'a' * 64}", content=b"other bytes")
    assert response.status_code == 400 and "sha256" in response.json()["detail"]
    bad_run = httpx.put(f"{tester_url}/v1/runs/a.b/snapshots/{'a' * 64}", content=b"x")
    assert bad_run.status_code == 400 and "run id" in bad_run.json()["detail"]
    assert httpx.head(f"{tester_url}/v1/runs/run-a/snapshots/not-a-digest").status_code == 400


def test_health_info_metrics_and_openapi(analyzer_url: str) -> None:
    assert httpx.get(f"{analyzer_url}/healthz").json()["status"] == "ok"
    HttpAnalyzer(analyzer_url).analyze(
        AnalyzeRequest(file=SourceFile(path="a.py", content="x = 1\n"))
    )
    metrics = httpx.get(f"{analyzer_url}/metrics").text
    assert 'tars_replica_requests_total{operation="analyze",role="analyzer",status="200"} 1.0' in (
        metrics
    )
    assert "tars_replica_request_duration_seconds_bucket" in metrics
    assert "/v1/analyze" in httpx.get(f"{analyzer_url}/openapi.json").json()["paths"]


def test_unreachable_role_is_a_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RoleUnavailableError, match="unreachable"):
        HttpAnalyzer(f"http://127.0.0.1:{port}").info()


def test_serve_command_uses_env_defaults(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "TARS_ROLE": "analyzer",
        "TARS_MODEL": "codellama",
        "TARS_SCRATCH_DIR": str(tmp_path / "scratch"),
    }
    command = [sys.executable, "-m", "tars_engine.replica", "serve", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        analyzer = HttpAnalyzer(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            try:
                info = analyzer.info()
                break
            except RoleUnavailableError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert (info.role, info.model) == (Role.analyzer, "codellama")
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_without_a_role_or_with_an_unavailable_one_fails_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TARS_ROLE", raising=False)
    missing = CliRunner().invoke(cli, ["serve"])
    assert missing.exit_code == 2 and "no role given" in missing.output
    bad_engine = CliRunner().invoke(cli, ["serve", "--role", "analyzer", "--engine", "gpt"])
    assert bad_engine.exit_code == 2


def test_coordinator_with_malformed_volumes_env_fails_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "TARS_VOLUMES": "{not json", "TARS_SCRATCH_DIR": str(tmp_path)}
    command = [
        sys.executable,
        "-m",
        "tars_engine.replica",
        "serve",
        "--role",
        "coordinator",
    ]
    completed = subprocess.run(
        command, check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.startswith("error: TARS_VOLUMES is not JSON")
    assert completed.stderr.count("\n") == 1
