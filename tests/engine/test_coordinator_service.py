"""The coordinator over real HTTP: worker replicas served by uvicorn, real git projects, real runs."""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from kubernetes import client
from tars_api.replica import TarsReplica
from tars_api.run import (
    GitSource,
    RunConditionType,
    RunPhase,
    RunSource,
    SelfCodingRun,
    SelfCodingRunSpec,
    TestEnvironment,
    UploadSource,
    VolumeSource,
)
from tars_api.vocabulary import Role, SandboxMode
from tars_engine.cluster.run_api import (
    CoordinatorClient,
    RunAssignment,
    RunNotFoundError,
    RunReport,
)
from tars_engine.core.learning import LEARNING_DB_FILENAME, LearningStore
from tars_engine.core.settings import ReplicaSettings
from tars_engine.core.snapshot import pack_project
from tars_engine.replica import create_app
from tars_engine.transports.server import serve_in_thread
from tars_operator.run_driver import mirrored_status

from tests.harness.silent_server import silent_server
from tests.harness.tools import git, missing_component, run_tool
from tests.harness.workflow import shop_origin, shop_project

# A bound on waiting for a run, so a broken coordinator fails the test instead of hanging it.
RUN_WAIT_SECONDS = 300


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[Role, str]]:
    """One analyzer, generator and tester replica, each served over HTTP."""
    settings = ReplicaSettings(scratch_dir=tmp_path_factory.mktemp("workers"))
    with contextlib.ExitStack() as stack:
        yield {
            role: stack.enter_context(serve_in_thread(create_app(role, settings)))
            for role in (Role.analyzer, Role.generator, Role.tester)
        }


@contextlib.contextmanager
def coordinator(
    scratch: Path,
    workers: dict[Role, str] | None,
    monkeypatch: pytest.MonkeyPatch,
    *,
    volumes: dict[str, str] | None = None,
    kubeconfig: Path | None = None,
    git_timeout_seconds: float | None = None,
) -> Iterator[CoordinatorClient]:
    """A coordinator replica configured the way the operator configures its pods: by env."""
    with monkeypatch.context() as env:
        if git_timeout_seconds is not None:
            env.setenv("TARS_GIT_TIMEOUT_SECONDS", str(git_timeout_seconds))
        for role in (Role.analyzer, Role.generator, Role.tester):
            name = f"TARS_ENDPOINTS_{role.value.upper()}"
            if workers:
                env.setenv(name, workers[role])
            else:
                env.delenv(name, raising=False)
        env.setenv("TARS_VOLUMES", json.dumps(volumes or {}))
        if kubeconfig is not None:
            env.setenv("KUBECONFIG", str(kubeconfig))
        app = create_app(Role.coordinator, ReplicaSettings.from_env(scratch_dir=scratch))
    with serve_in_thread(app) as url, CoordinatorClient(url) as api:
        yield api


def assignment(name: str, spec: SelfCodingRunSpec, **extra: object) -> RunAssignment:
    return RunAssignment(namespace="default", name=name, uid=str(uuid.uuid4()), spec=spec, **extra)


def wait_until(
    api: CoordinatorClient, uid: str, done: Callable[[RunReport], bool] | None = None
) -> RunReport:
    """Poll the run until `done(report)` (default: until it has finished)."""
    deadline = time.monotonic() + RUN_WAIT_SECONDS
    while True:
        report = api.report(uid)
        if done(report) if done is not None else report.finished:
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"run {uid} did not get there: {report.model_dump_json()}")
        time.sleep(0.2)


def volume_spec(**spec: object) -> SelfCodingRunSpec:
    return SelfCodingRunSpec(
        targets=["shop"],
        source=RunSource(volume=VolumeSource(host_path="/projects", sub_path="shop")),
        **spec,
    )


def candidate_trailers(repository: Path, branch: str = "HEAD") -> list[str]:
    """The Tars-Candidate trailers on `branch`, newest first."""
    log = git(repository, "log", "--format=%(trailers:key=Tars-Candidate,valueonly)", branch)
    return [line.strip() for line in log.splitlines() if line.strip()]


def test_volume_run_applies_commits_and_reports(
    tmp_path: Path, workers: dict[Role, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = shop_project(tmp_path / "projects" / "shop")
    volumes = {"hostPath:/projects": str(tmp_path / "projects")}
    with coordinator(tmp_path / "scratch", workers, monkeypatch, volumes=volumes) as api:
        run = assignment("volume-run", volume_spec(auto_apply=True))
        first = api.assign(run)
        again = api.assign(run)
        report = wait_until(api, run.uid)
        patch = api.patch(run.uid)
        results = api.results(run.uid)
        metrics = httpx.get(f"{api.base_url}/metrics").text

    assert first.uid == again.uid == run.uid
    assert report.status.phase is RunPhase.succeeded, report.message
    applied = report.status.statistics.improvements_applied
    assert applied >= 2
    # compat.py's "unused" import is re-exported: the tests refuse its removal.
    assert "in shop/compat.py" not in git(root, "log", "--format=%s")
    trailers = candidate_trailers(root)
    assert len(trailers) == len(set(trailers)) == applied
    # The patch is what was committed: it reverses cleanly off the edited project.
    subprocess.run(
        ["git", "apply", "--check", "--reverse"], cwd=root, input=patch.encode(), check=True
    )
    assert {r.path for r in results.files} >= {"shop/cart.py", "shop/compat.py"}
    assert results.test_runs_per_change.accepted_changes == applied
    assert f'endpoint="{workers[Role.generator]}"' in metrics
    assert "tars_coordinator_requests_total{endpoint=" in metrics


def test_a_run_with_a_test_image_is_refused_where_the_testers_are_fixed(
    tmp_path: Path, workers: dict[Role, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fixed endpoints are no run's own: none of them is known to run the image.
    shop_project(tmp_path / "projects" / "shop")
    volumes = {"hostPath:/projects": str(tmp_path / "projects")}
    with coordinator(tmp_path / "scratch", workers, monkeypatch, volumes=volumes) as api:
        image = TestEnvironment(image="localhost/shop-tests:1")
        run = assignment("imaged", volume_spec(test_environment=image))
        api.assign(run)
        report = wait_until(api, run.uid)
        metrics = httpx.get(f"{api.base_url}/metrics").text
    assert report.status.phase is RunPhase.failed
    assert report.message.startswith(
        "spec.testEnvironment.image needs the run's own tester, found by discovery"
    )
    assert 'role="tester"' not in metrics


def test_a_run_without_learning_leaves_the_coordinators_store_alone(
    tmp_path: Path, workers: dict[Role, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shop_project(tmp_path / "projects" / "shop")
    volumes = {"hostPath:/projects": str(tmp_path / "projects")}
    store = LearningStore(tmp_path / "scratch" / LEARNING_DB_FILENAME)
    with coordinator(tmp_path / "scratch", workers, monkeypatch, volumes=volumes) as api:
        unlearned = assignment("unlearned", volume_spec(learning=False))
        api.assign(unlearned)
        report = wait_until(api, unlearned.uid)
        assert report.status.phase is RunPhase.succeeded, report.message
        assert report.status.statistics.improvements_accepted > 0
        assert report.message.endswith("; learning off")
        assert store.count() == 0

        learned = assignment("learned", volume_spec())
        api.assign(learned)
        assert wait_until(api, learned.uid).status.phase is RunPhase.succeeded
        assert store.count() > 0


def test_unmounted_volume_fails_naming_it(
    tmp_path: Path, workers: dict[Role, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with coordinator(tmp_path / "scratch", workers, monkeypatch) as api:
        run = assignment(
            "no-volume",
            SelfCodingRunSpec(
                targets=["src"], source=RunSource(volume=VolumeSource(claim_name="project-data"))
            ),
        )
        api.assign(run)
        report = wait_until(api, run.uid)
        with pytest.raises(RunNotFoundError):
            api.report("no-such-run")
    assert report.status.phase is RunPhase.failed
    assert "PersistentVolumeClaim project-data is not mounted" in report.message


def counting_test_command(counter: Path, pids: Path, hang_on: int) -> list[str]:
    """The project's pytest, except: the first run fails, and run number `hang_on` hangs
    until killed.

    It keeps its count and its PID outside the copy, which the sandbox forbids
    (tests/engine/test_sandbox.py): the runs that use it turn the sandbox off.
    """
    script = (
        "import os, pathlib, sys, time\n"
        f"counter = pathlib.Path({str(counter)!r})\n"
        "n = int(counter.read_text()) if counter.exists() else 0\n"
        "counter.write_text(str(n + 1))\n"
        "if n == 0: sys.exit(1)\n"
        f"if n == {hang_on}:\n"
        f"    pathlib.Path({str(pids)!r}).write_text(str(os.getpid()))\n"
        "    time.sleep(3600)\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider'])\n"
    )
    return [sys.executable, "-c", script]


def process_gone(pid: int) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_stop_kills_the_test_run_and_a_new_coordinator_resumes_without_reapplying(
    tmp_path: Path, workers: dict[Role, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = shop_project(tmp_path / "projects" / "shop")
    volumes = {"hostPath:/projects": str(tmp_path / "projects")}
    hanging = tmp_path / "hanging.pid"
    # Runs: 0 the batch fails, 1 the baseline passes, 2 the first half passes (applied),
    # 3 the next one hangs: the run is stopped (or its coordinator dies) right there.
    command = counting_test_command(tmp_path / "count", hanging, hang_on=3)
    spec = volume_spec(auto_apply=True, test_command=command, sandbox=SandboxMode.off)
    run = assignment("resumed", spec)
    with coordinator(tmp_path / "scratch-1", workers, monkeypatch, volumes=volumes) as api:
        api.assign(run)
        hung = wait_until(api, run.uid, lambda r: hanging.exists())
        stopped = api.stop(run.uid)
        stopped = wait_until(api, run.uid)
    assert stopped.status.phase is RunPhase.stopped, stopped.message
    assert process_gone(int(hanging.read_text()))
    kept = candidate_trailers(root)
    assert len(kept) == stopped.status.statistics.improvements_applied >= 1

    # The operator saw `hung` last: a new coordinator (empty scratch) is handed its checkpoint.
    assert hung.checkpoint is not None and hung.checkpoint.applied
    with coordinator(tmp_path / "scratch-2", workers, monkeypatch, volumes=volumes) as api:
        api.assign(run.model_copy(update={"checkpoint": hung.checkpoint}))
        resumed = wait_until(api, run.uid)
    assert resumed.status.phase is RunPhase.succeeded, resumed.message
    trailers = candidate_trailers(root)
    assert trailers[-len(kept) :] == kept  # the first commits, untouched
    assert len(trailers) == len(set(trailers)) == resumed.status.statistics.improvements_applied
    assert len(trailers) > len(kept)


def test_git_source_commits_on_a_branch_and_pushes_it(
    tmp_path: Path, workers: dict[Role, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = shop_origin(tmp_path)
    spec = SelfCodingRunSpec(
        targets=["shop"],
        source=RunSource(git=GitSource(url=f"file://{bare}", ref="main", allow_file_protocol=True)),
        auto_apply=True,
    )
    with coordinator(tmp_path / "scratch", workers, monkeypatch) as api:
        run = assignment("from-git", spec)
        api.assign(run)
        report = wait_until(api, run.uid)
        results = api.results(run.uid)
    assert report.status.phase is RunPhase.succeeded, report.message
    assert report.status.branch == "tars/from-git"
    assert results.pushed is True
    assert "pushed tars/from-git" in report.message
    applied = report.status.statistics.improvements_applied
    assert len(candidate_trailers(bare, "tars/from-git")) == applied
    # The branch is main plus one commit per improvement.
    assert git(bare, "rev-parse", "main") == git(bare, "rev-parse", f"tars/from-git~{applied}")


def test_unreachable_git_url_fails_the_run_clearly(
    tmp_path: Path, workers: dict[Role, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no-such-repository.git"
    spec = SelfCodingRunSpec(
        targets=["shop"],
        source=RunSource(git=GitSource(url=f"file://{missing}", allow_file_protocol=True)),
    )
    with coordinator(tmp_path / "scratch", workers, monkeypatch) as api:
        run = assignment("unreachable", spec)
        api.assign(run)
        report = wait_until(api, run.uid)
    assert report.status.phase is RunPhase.failed
    assert report.message.startswith(f"cannot fetch file://{missing}")


def git_spec(url: str, **source: object) -> SelfCodingRunSpec:
    return SelfCodingRunSpec(targets=["shop"], source=RunSource(git=GitSource(url=url, **source)))


def test_a_file_url_fails_the_run_unless_the_run_allows_it(
    tmp_path: Path, workers: dict[Role, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = shop_origin(tmp_path)
    with coordinator(tmp_path / "scratch", workers, monkeypatch) as api:
        run = assignment("file-url", git_spec(f"file://{bare}"))
        api.assign(run)
        report = wait_until(api, run.uid)
    assert report.status.phase is RunPhase.failed
    assert report.message == (
        f"spec.source.git.url file://{bare} is refused: "
        "file:// URLs are allowed only when the git source sets allowFileProtocol"
    )


def test_a_git_server_that_never_answers_fails_the_run_at_the_timeout(
    tmp_path: Path, workers: dict[Role, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        silent_server() as server,
        coordinator(tmp_path / "scratch", workers, monkeypatch, git_timeout_seconds=2) as api,
    ):
        run = assignment("silent-git", git_spec(server.git_url()))
        api.assign(run)
        report = wait_until(api, run.uid)
    assert server.accepted.is_set()
    assert report.status.phase is RunPhase.failed
    assert report.message == f"cannot fetch {server.git_url()}: git fetch timed out after 2s"
    # What the operator makes of it: the run's Complete condition says why it failed.
    scr = SelfCodingRun.build(run.name, ["shop"], run.spec.source, namespace="default")
    status = mirrored_status(scr, report, "coordinator", now=datetime.datetime.now(datetime.UTC))
    complete = next(c for c in status.conditions if c.type == RunConditionType.complete)
    assert (complete.status, complete.reason, complete.message) == (
        "True",
        "Failed",
        report.message,
    )


def test_stop_ends_a_run_whose_source_is_still_being_fetched(
    tmp_path: Path, workers: dict[Role, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        silent_server() as server,
        coordinator(tmp_path / "scratch", workers, monkeypatch) as api,
    ):
        run = assignment("stopped-fetch", git_spec(server.git_url()))
        api.assign(run)
        assert server.accepted.wait(RUN_WAIT_SECONDS)
        preparing = api.report(run.uid)
        api.stop(run.uid)
        report = wait_until(api, run.uid)
    assert (preparing.finished, preparing.message) == (False, "preparing the source")
    assert report.status.phase is RunPhase.stopped
    assert report.message == "stop requested before the run started"


def test_upload_source_from_a_configmap_yields_a_patch_that_applies(
    tmp_path: Path,
    workers: dict[Role, str],
    monkeypatch: pytest.MonkeyPatch,
    kubeconfig: Path,
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    project = shop_project(tmp_path / "checkout")
    client.CoreV1Api(api_client).create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="shop-upload"),
            binary_data={"project.tar.gz": base64.b64encode(pack_project(project)).decode()},
        ),
    )
    spec = SelfCodingRunSpec(
        targets=["shop"], source=RunSource(upload=UploadSource(config_map="shop-upload"))
    )
    run = RunAssignment(namespace=namespace, name="uploaded", uid=str(uuid.uuid4()), spec=spec)
    with coordinator(tmp_path / "scratch", workers, monkeypatch, kubeconfig=kubeconfig) as api:
        api.assign(run)
        report = wait_until(api, run.uid)
        patch = api.patch(run.uid)
    assert report.status.phase is RunPhase.succeeded, report.message
    assert report.status.statistics.improvements_accepted >= 2
    assert git(project, "status", "--porcelain") == ""  # the checkout itself is untouched
    subprocess.run(["git", "apply", "--check"], cwd=project, input=patch.encode(), check=True)


def test_missing_upload_configmap_fails_the_run(
    tmp_path: Path,
    workers: dict[Role, str],
    monkeypatch: pytest.MonkeyPatch,
    kubeconfig: Path,
    namespace: str,
) -> None:
    spec = SelfCodingRunSpec(
        targets=["shop"], source=RunSource(upload=UploadSource(config_map="not-uploaded"))
    )
    run = RunAssignment(namespace=namespace, name="lost", uid=str(uuid.uuid4()), spec=spec)
    with coordinator(tmp_path / "scratch", workers, monkeypatch, kubeconfig=kubeconfig) as api:
        api.assign(run)
        report = wait_until(api, run.uid)
    assert report.status.phase is RunPhase.failed
    assert f"ConfigMap {namespace}/not-uploaded: 404" in report.message


# Addresses of RFC 2544's benchmarking range, never used on real networks, delivered to this
# machine through lo for the test: EndpointSlices refuse loopback addresses themselves.
REPLICA_NETWORK = "198.19.250.0/24"
REPLICA_ADDRESSES = {
    "analyzer": ["198.19.250.1"],
    "generator": ["198.19.250.2", "198.19.250.3", "198.19.250.4"],
    "tester": ["198.19.250.5"],
}


def _bindable(address: str) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


@pytest.fixture
def replica_network() -> Iterator[None]:
    """REPLICA_NETWORK routed to lo while the test runs, unless the machine routes it already."""
    if _bindable(REPLICA_ADDRESSES["analyzer"][0]):
        yield
        return
    route = ["local", REPLICA_NETWORK, "dev", "lo"]
    added = run_tool(["ip", "route", "add", *route], check=False)
    if added.returncode != 0:
        missing_component(f"routing {REPLICA_NETWORK} to lo: {added.stderr.strip()}")
    try:
        yield
    finally:
        run_tool(["ip", "route", "delete", *route])


@pytest.mark.usefixtures("replica_network")
def test_work_spreads_over_every_discovered_replica(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kubeconfig: Path,
    api_client: client.ApiClient,
    namespace: str,
    tars_crds: list[str],
) -> None:
    root = shop_project(tmp_path / "projects" / "shop")
    settings = ReplicaSettings(scratch_dir=tmp_path / "workers")
    custom = client.CustomObjectsApi(api_client)
    slices = client.DiscoveryV1Api(api_client)
    with contextlib.ExitStack() as stack:
        for role_name, addresses in REPLICA_ADDRESSES.items():
            role = Role(role_name)
            urls = [
                stack.enter_context(serve_in_thread(create_app(role, settings), host=address))
                for address in addresses
            ]
            custom.create_namespaced_custom_object(
                "tars.dev", "v1alpha1", namespace, "tarsreplicas",
                TarsReplica.build(role_name, role, namespace=namespace).to_dict(),
            )  # fmt: skip
            # One slice per address: each replica server listens on its own port.
            for index, url in enumerate(urls):
                host, port = url.removeprefix("http://").rsplit(":", 1)
                slices.create_namespaced_endpoint_slice(
                    namespace,
                    client.V1EndpointSlice(
                        metadata=client.V1ObjectMeta(
                            name=f"{role_name}-{index}",
                            labels={"kubernetes.io/service-name": role_name},
                        ),
                        address_type="IPv4",
                        ports=[client.DiscoveryV1EndpointPort(name="http", port=int(port))],
                        endpoints=[
                            client.V1Endpoint(
                                addresses=[host],
                                conditions=client.V1EndpointConditions(ready=True),
                            )
                        ],
                    ),
                )
        volumes = {"hostPath:/projects": str(tmp_path / "projects")}
        with coordinator(
            tmp_path / "scratch", None, monkeypatch, volumes=volumes, kubeconfig=kubeconfig
        ) as api:
            run = RunAssignment(
                namespace=namespace, name="spread", uid=str(uuid.uuid4()), spec=volume_spec()
            )
            api.assign(run)
            report = wait_until(api, run.uid)
            metrics = httpx.get(f"{api.base_url}/metrics").text
    assert report.status.phase is RunPhase.succeeded, report.message
    assert git(root, "status", "--porcelain") == ""  # a patch, not edits, without autoApply
    generated = [
        line
        for line in metrics.splitlines()
        if line.startswith("tars_coordinator_requests_total")
        and 'operation="POST /v1/generate"' in line
        and not line.rstrip().endswith(" 0.0")
    ]
    assert (
        sorted(line.split('endpoint="http://')[1].split(":")[0] for line in generated)
        == (REPLICA_ADDRESSES["generator"])
    )


def test_git_run_resumed_by_a_new_coordinator_continues_its_pushed_branch(
    tmp_path: Path, workers: dict[Role, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = shop_origin(tmp_path)
    hanging = tmp_path / "hanging.pid"
    command = counting_test_command(tmp_path / "count", hanging, hang_on=3)
    spec = SelfCodingRunSpec(
        targets=["shop"],
        source=RunSource(git=GitSource(url=f"file://{bare}", ref="main", allow_file_protocol=True)),
        auto_apply=True,
        test_command=command,
        sandbox=SandboxMode.off,
    )
    run = assignment("git-resumed", spec)
    with coordinator(tmp_path / "scratch-1", workers, monkeypatch) as api:
        api.assign(run)
        hung = wait_until(api, run.uid, lambda r: hanging.exists())
        api.stop(run.uid)
        stopped = wait_until(api, run.uid)
    assert stopped.status.phase is RunPhase.stopped, stopped.message
    kept = candidate_trailers(bare, "tars/git-resumed")
    assert len(kept) == stopped.status.statistics.improvements_applied >= 1

    # A new coordinator clones afresh, continues the pushed branch and finishes the run.
    with coordinator(tmp_path / "scratch-2", workers, monkeypatch) as api:
        api.assign(run.model_copy(update={"checkpoint": hung.checkpoint}))
        resumed = wait_until(api, run.uid)
    assert resumed.status.phase is RunPhase.succeeded, resumed.message
    assert "pushed tars/git-resumed" in resumed.message
    trailers = candidate_trailers(bare, "tars/git-resumed")
    assert trailers[-len(kept) :] == kept
    assert len(trailers) == len(set(trailers)) == resumed.status.statistics.improvements_applied
    assert len(trailers) > len(kept)
