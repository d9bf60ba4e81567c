"""The images `make images` built, run for real as the operator's pods run them.

Each container runs with the replica pod's security settings (tests.harness.images): the
fixed non-root uid, a read-only root with only the scratch volume writable, no
capabilities, no privilege escalation, the runtime's default seccomp profile. The images'
entrypoints answer, their user is the uid the chart assumes, nothing but scratch takes a
write, and the replica image serves /healthz with its own CMD.

The tester's bubblewrap sandbox is probed inside the replica image: under the pod's settings
the runtime's masked /proc makes bwrap's own /proc mount fail, so `required` refuses the
run and `auto` says plainly it ran without a sandbox; with /proc unmasked in a private user
namespace (Kubernetes' `procMount: Unmasked` with `hostUsers: false`) the sandbox works.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest
from tars_api.vocabulary import Role, SandboxMode
from tars_engine.core.models import SnapshotRef, TestRequest, TestResult
from tars_engine.core.snapshot import pack_project
from tars_engine.transports.http_client import HttpAnalyzer, HttpTester
from tars_operator.config import NON_ROOT_ID

from tests.harness.images import SCRATCH_DIR, ContainerSecurity, Engine
from tests.harness.projects import calc_project

IMAGES = ("operator", "replica")
# Where a process in the container might try to write, besides its scratch volume.
ROOT_PLACES = ("/", "/etc", "/opt/tars", "/tmp", "/var/tmp", "/usr/local")
WRITE_PROBE = """
import json, sys
result = {}
for place in sys.argv[1:]:
    try:
        with open(place.rstrip("/") + "/tars-write-probe", "w") as probe:
            probe.write("x")
        result[place] = "written"
    except OSError as error:
        result[place] = error.strerror
print(json.dumps(result))
"""
CALC_TESTS = 3


def image_of(engine: Engine, image: str) -> str:
    return engine.build.replica if image == "replica" else engine.build.operator


def test_operator_entrypoint_answers_version(image_engine: Engine) -> None:
    result = image_engine.run(image_engine.build.operator, "--version")
    assert result.stdout.strip() == f"tars-operator {image_engine.build.version}"


def test_replica_entrypoint_answers_help(image_engine: Engine) -> None:
    result = image_engine.run(image_engine.build.replica, "--help")
    assert "serve" in result.stdout, result.stdout


def test_replica_entrypoint_answers_version(image_engine: Engine) -> None:
    result = image_engine.run(image_engine.build.replica, "--version")
    assert result.stdout.strip() == f"tars-replica {image_engine.build.version}"


@pytest.mark.parametrize("image", IMAGES)
def test_tarscli_answers_help(image_engine: Engine, image: str) -> None:
    result = image_engine.run(image_of(image_engine, image), "--help", entrypoint="tarscli")
    assert "self-code" in result.stdout, result.stdout


def test_replica_image_has_git_and_bubblewrap(image_engine: Engine) -> None:
    """git for the coordinator's sources and commits, bwrap for the tester's sandbox."""
    result = image_engine.run(
        image_engine.build.replica, "-c", "git --version && bwrap --version", entrypoint="sh"
    )
    assert result.stdout.startswith("git version "), result.stdout
    assert "bubblewrap " in result.stdout, result.stdout


@pytest.mark.parametrize("image", IMAGES)
def test_image_user_is_the_fixed_non_root_uid(image_engine: Engine, image: str) -> None:
    """The image's own USER, not the pod's runAsUser: runAsNonRoot checks the image."""
    result = image_engine.run(
        image_of(image_engine, image), "-c", "id -u; id -g",
        entrypoint="sh", security=ContainerSecurity(image_user=True),
    )  # fmt: skip
    assert result.stdout.split() == [str(NON_ROOT_ID), str(NON_ROOT_ID)]


@pytest.mark.parametrize("image", IMAGES)
def test_only_the_scratch_volume_is_writable(image_engine: Engine, image: str) -> None:
    result = image_engine.run(
        image_of(image_engine, image), "-c", WRITE_PROBE, *ROOT_PLACES, SCRATCH_DIR,
        entrypoint="python",
    )  # fmt: skip
    outcomes = json.loads(result.stdout)
    assert outcomes == {
        **dict.fromkeys(ROOT_PLACES, "Read-only file system"),
        SCRATCH_DIR: "written",
    }


def test_replica_serves_healthz_with_its_own_cmd(image_engine: Engine) -> None:
    with image_engine.replica(Role.analyzer) as url:
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        analyzer = HttpAnalyzer(url)
        try:
            assert analyzer.info().role is Role.analyzer
        finally:
            analyzer.close()


def results_of(url: str, project: Path, mode: SandboxMode) -> TestResult:
    """The project's tests run by the tester at `url`, with the sandbox in `mode`."""
    tester = HttpTester(url)
    try:
        archive = pack_project(project)
        ref = SnapshotRef(run_id="probe", digest=hashlib.sha256(archive).hexdigest())
        assert tester.put_snapshot(ref.run_id, archive) == ref
        return tester.run_tests(
            TestRequest(snapshot=ref, candidates=[], sandbox=mode, timeout_seconds=120)
        )
    finally:
        tester.close()


def test_sandbox_under_the_pods_settings_is_refused_or_said_off(
    image_engine: Engine, tmp_path: Path
) -> None:
    project = calc_project(tmp_path / "project")
    with image_engine.replica(Role.tester) as url:
        required = results_of(url, project, SandboxMode.required)
        automatic = results_of(url, project, SandboxMode.auto)
    assert required.sandbox is not None and required.sandbox.refused, required
    assert not required.passed and required.tests_run == 0
    assert required.sandbox.detail.startswith("sandbox required, and ")
    # The runtime masks parts of /proc; the kernel then refuses bwrap a fresh /proc mount.
    assert "bwrap: Can't mount proc on /" in required.sandbox.detail
    assert "Operation not permitted" in required.sandbox.detail
    assert automatic.sandbox is not None and not automatic.sandbox.isolated
    assert automatic.sandbox.detail.startswith("no sandbox: "), automatic.sandbox.detail
    assert automatic.passed and automatic.tests_run == CALC_TESTS, automatic.output


def test_sandbox_works_with_unmasked_proc_in_a_private_user_namespace(
    image_engine: Engine, tmp_path: Path
) -> None:
    project = calc_project(tmp_path / "project")
    security = ContainerSecurity(unmasked_proc=True, private_users=True)
    with image_engine.replica(Role.tester, security=security) as url:
        result = results_of(url, project, SandboxMode.required)
    assert result.sandbox is not None and result.sandbox.isolated, result.sandbox
    assert result.passed and result.tests_run == CALC_TESTS, result.output
