"""The tester's sandbox against a hostile project, with the real bwrap and real processes.

The hostile project's tests each try one escape: write the user's tree by absolute path,
write through `../` into the tester's scratch directory, overwrite another run's cached
snapshot, read an exported secret and the real HOME, reach the network, and leave a
process behind. Under bwrap each of its tests passes only if its escape failed; the same
project run with the sandbox off shows that the attempts are real.
"""

from __future__ import annotations

import os
import site
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from tars_api.run import RunPhase
from tars_api.vocabulary import SandboxMode
from tars_engine.core.learning import LearningStore
from tars_engine.core.models import TestRequest, TestResult
from tars_engine.core.role_set import SnapshotMissingError
from tars_engine.core.settings import ReplicaSettings
from tars_engine.core.snapshot import pack_project
from tars_engine.roles import sandbox
from tars_engine.roles.sandbox import SandboxPolicy, bwrap_argv
from tars_engine.roles.tester import Tester

from tests.harness.hostile import (
    HOSTILE_TEST_COUNT,
    HOSTILE_TEST_FILE,
    SECRET_VARIABLE,
    hostile_tests,
    leftovers,
)
from tests.harness.projects import calc_project, tree_hashes
from tests.harness.tools import path_with_only_git
from tests.harness.workflow import isolated_roles, learning, run_workflow, sample_project

__all__ = ["isolated_roles", "learning"]

SECRET = "s3cret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def bwrap() -> str:
    """A working bwrap: missing, it skips, except under CI=true, where it fails."""
    found, where = sandbox.find_bwrap(os.environ.get("PATH"))
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"required under CI=true: {where}")
        pytest.skip(where)
    return found


@pytest.fixture
def listener() -> Iterator[int]:
    """A port on loopback that accepts connections (the backlog answers without accept)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(SECRET_VARIABLE, SECRET)
    return SECRET


def hostile_run(tmp_path: Path, port: int, mode: SandboxMode, **request: object):
    """The hostile project tested once in `mode`: the result, its marker, tree and scratch."""
    marker = f"tars-leftover-{uuid.uuid4().hex}"
    scratch = tmp_path / "scratch"
    original = tmp_path / "project"
    project = calc_project(
        original, extra={HOSTILE_TEST_FILE: hostile_tests(original, scratch, port, marker)}
    )
    tester = Tester(ReplicaSettings(scratch_dir=scratch))
    other = tester.put_snapshot("other-run", pack_project(calc_project(tmp_path / "other")))
    ref = tester.put_snapshot("this-run", pack_project(project))
    before = tree_hashes(project)
    result = tester.run_tests(
        TestRequest(snapshot=ref, candidates=[], sandbox=mode, timeout_seconds=300, **request)
    )
    return result, marker, project, before, tester, other


def one_sandboxed_run(tmp_path: Path, project: Path, **request: object) -> TestResult:
    """`project` tested once in the required sandbox by a tester of its own."""
    tester = Tester(ReplicaSettings(scratch_dir=tmp_path / "scratch"))
    ref = tester.put_snapshot("this-run", pack_project(project))
    return tester.run_tests(
        TestRequest(snapshot=ref, candidates=[], sandbox=SandboxMode.required, **request)
    )


def test_every_escape_fails_inside_the_sandbox(
    bwrap: str, tmp_path: Path, listener: int, secret: str
) -> None:
    result, marker, project, before, tester, other = hostile_run(
        tmp_path, listener, SandboxMode.required
    )
    assert result.passed and result.tests_run == HOSTILE_TEST_COUNT + 3, result.output
    assert result.sandbox is not None and result.sandbox.isolated and not result.sandbox.network
    assert bwrap in result.sandbox.detail
    assert tree_hashes(project) == before
    assert secret not in result.output
    assert leftovers(marker) == []
    assert not list((tmp_path / "scratch").rglob("planted.txt"))
    # The other run's snapshot is untouched: it still verifies against its digest.
    tester.run_tests(TestRequest(snapshot=other, candidates=[], sandbox=SandboxMode.required))


def test_without_the_sandbox_the_same_escapes_succeed(
    tmp_path: Path, listener: int, secret: str
) -> None:
    result, marker, project, before, _, _ = hostile_run(tmp_path, listener, SandboxMode.off)
    try:
        assert result.sandbox is not None and not result.sandbox.isolated
        assert "turned it off" in result.sandbox.detail
        assert not result.passed
        assert tree_hashes(project) != before
        assert secret not in result.output  # the allowlist holds without bwrap too
        assert leftovers(marker)
    finally:
        for process in leftovers(marker):
            process.kill()


def test_a_named_variable_and_the_network_when_the_run_opts_in(
    bwrap: str, tmp_path: Path, listener: int, secret: str
) -> None:
    project = calc_project(
        tmp_path / "project",
        extra={
            "tests/test_opted_in.py": textwrap.dedent(
                f"""\
                import os, socket


                def test_gets_what_the_run_names():
                    assert os.environ["{SECRET_VARIABLE}"] == "{secret}"
                    socket.create_connection(("127.0.0.1", {listener}), timeout=10).close()
                """
            )
        },
    )
    result = one_sandboxed_run(tmp_path, project, network=True, env_names=[SECRET_VARIABLE])
    assert result.passed, result.output
    assert result.sandbox is not None and result.sandbox.isolated and result.sandbox.network
    assert "network allowed" in result.sandbox.detail


def test_the_projects_own_virtualenv_runs_inside(bwrap: str, tmp_path: Path) -> None:
    """A project venv whose base interpreter lies under the hidden HOME is bound back."""
    project = calc_project(tmp_path / "project")
    venv = tmp_path / "project-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # pytest comes from the tester's own site-packages, named in a .pth as a project would.
    (next(venv.glob("lib/python3*/site-packages")) / "tester.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n"
    )
    python = venv / "bin" / "python"
    result = one_sandboxed_run(tmp_path, project, test_command=[str(python), "-m", "pytest", "-q"])
    assert result.passed and result.tests_run == 3, result.output


def test_directories_a_virtualenvs_pth_files_name_are_bound_back(
    bwrap: str, tmp_path: Path
) -> None:
    """A .pth naming a directory under /tmp, which the sandbox's private /tmp would hide."""
    shared = tmp_path / "shared-site"
    shared.mkdir()
    (shared / "only_via_pth.py").write_text("VALUE = 3\n")
    project = calc_project(
        tmp_path / "project",
        extra={
            "tests/test_shared.py": "from only_via_pth import VALUE\n\n\n"
            "def test_value():\n    assert VALUE == 3\n"
        },
    )
    venv = tmp_path / "project-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (next(venv.glob("lib/python3*/site-packages")) / "shared.pth").write_text(
        "\n".join([*site.getsitepackages(), str(shared)]) + "\n"
    )
    python = venv / "bin" / "python"
    result = one_sandboxed_run(tmp_path, project, test_command=[str(python), "-m", "pytest", "-q"])
    assert result.passed and result.tests_run == 4, result.output


def test_required_without_bwrap_refuses_and_auto_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A PATH without bwrap: the real way a machine lacks it.
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    project = calc_project(tmp_path / "project")
    tester = Tester(ReplicaSettings(scratch_dir=tmp_path / "scratch"))
    ref = tester.put_snapshot("this-run", pack_project(project))
    refused = tester.run_tests(
        TestRequest(snapshot=ref, candidates=[], sandbox=SandboxMode.required)
    )
    assert not refused.passed and refused.sandbox is not None and refused.sandbox.refused
    assert "bwrap is not on PATH" in refused.output and refused.tests_run == 0
    auto = tester.run_tests(TestRequest(snapshot=ref, candidates=[], sandbox=SandboxMode.auto))
    assert auto.passed, auto.output
    assert auto.sandbox is not None and not auto.sandbox.isolated
    assert "no sandbox: bwrap is not on PATH" in auto.sandbox.detail


def test_a_snapshot_changed_on_disk_is_dropped_not_run(tmp_path: Path) -> None:
    tester = Tester(ReplicaSettings(scratch_dir=tmp_path / "scratch"))
    ref = tester.put_snapshot("this-run", pack_project(calc_project(tmp_path / "project")))
    planted = pack_project(calc_project(tmp_path / "planted", extra={"evil.py": "x = 1\n"}))
    archive = tester.snapshot_dir / ref.run_id / f"{ref.digest}.tar.gz"
    archive.write_bytes(planted)
    with pytest.raises(SnapshotMissingError, match="changed since it was stored"):
        tester.run_tests(TestRequest(snapshot=ref, candidates=[]))
    assert not archive.exists()
    # Put again, it runs.
    assert tester.put_snapshot("this-run", pack_project(tmp_path / "project")) == ref
    assert tester.run_tests(TestRequest(snapshot=ref, candidates=[])).passed


def test_snapshots_are_private_to_their_run_and_pruned(tmp_path: Path) -> None:
    tester = Tester(ReplicaSettings(scratch_dir=tmp_path / "scratch"))
    project = calc_project(tmp_path / "project")
    refs = []
    for number in range(6):
        (project / "version.py").write_text(f"VERSION = {number}\n")
        ref = tester.put_snapshot("this-run", pack_project(project))
        # Each stored a second after the one before, whatever the clock's granularity.
        stored = tester.snapshot_dir / ref.run_id / f"{ref.digest}.tar.gz"
        os.utime(stored, (1_000_000.0 + number, 1_000_000.0 + number))
        refs.append(ref)
    assert not tester.has_snapshot(refs[-1].model_copy(update={"run_id": "other-run"}))
    kept = [ref for ref in refs if tester.has_snapshot(ref)]
    assert kept == refs[-4:]
    assert (tester.snapshot_dir.stat().st_mode & 0o777) == 0o700
    assert ((tester.snapshot_dir / "this-run").stat().st_mode & 0o777) == 0o700
    # A run idle for longer than the limit loses its snapshots when another run stores one.
    idle = tester.put_snapshot("idle-run", pack_project(project))
    long_ago = 1_000_000.0
    os.utime(tester.snapshot_dir / "idle-run", (long_ago, long_ago))
    tester.put_snapshot("this-run", pack_project(calc_project(tmp_path / "again")))
    assert not tester.has_snapshot(idle)


def test_policy_argv_hides_and_binds_in_order() -> None:
    policy = SandboxPolicy(
        run_dir=Path("/scratch/runs/run-1"),
        workdir=Path("/scratch/runs/run-1/project"),
        private_tmp=Path("/scratch/runs/run-1/tmp"),
        hidden=(Path("/scratch"), Path("/home/u")),
        readable=(Path("/home/u/.pyenv/versions/3.11"), Path("/usr"), Path("/home")),
        network=False,
    )
    argv = bwrap_argv("/usr/bin/bwrap", policy, ["python", "-m", "pytest"])
    assert argv[-4:] == ["--", "python", "-m", "pytest"]
    assert "--share-net" not in argv and "--unshare-all" in argv and "--die-with-parent" in argv
    joined = " ".join(argv)
    # Under a hidden directory only, never / nor a parent of a hidden one.
    assert "--ro-bind /home/u/.pyenv/versions/3.11 /home/u/.pyenv/versions/3.11" in joined
    assert "--ro-bind /usr" not in joined and "--ro-bind /home /home" not in joined
    assert joined.index("--tmpfs /home/u") < joined.index("--ro-bind /home/u/.pyenv")
    assert joined.index("--bind /scratch/runs/run-1 /scratch/runs/run-1") < joined.index(
        "--remount-ro /scratch"
    )
    shared = bwrap_argv("bwrap", policy.model_copy(update={"network": True}), ["true"])
    assert "--share-net" in shared


def test_scratch_default_is_the_users_own(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TARS_SCRATCH_DIR", raising=False)
    scratch = ReplicaSettings.from_env().scratch_dir
    assert scratch == tmp_path / "cache" / "tars-selfcoding" / "scratch"


def test_a_timed_out_sandboxed_run_leaves_no_process(bwrap: str, tmp_path: Path) -> None:
    marker = f"tars-leftover-{uuid.uuid4().hex}"
    hanging = textwrap.dedent(
        f"""\
        import subprocess, sys, time


        def test_hangs_with_a_child_in_its_own_session():
            subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(600)", "{marker}"],
                start_new_session=True,
            )
            time.sleep(600)
        """
    )
    project = calc_project(tmp_path / "project", extra={"tests/test_hang.py": hanging})
    # Long enough for pytest to start and spawn the child on a busy machine.
    result = one_sandboxed_run(tmp_path, project, timeout_seconds=8)
    assert result.timed_out and not result.passed
    # The sandbox's PID namespace ends with its killed init; the kernel reaps what was in it.
    _, alive = psutil.wait_procs(leftovers(marker), timeout=60)
    assert alive == []


def test_a_run_requiring_a_sandbox_the_tester_lacks_fails_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, learning: LearningStore
) -> None:
    """What a cluster run gets when the tester pod cannot run bwrap (no CLI checks first)."""
    root = sample_project(tmp_path / "ledgerly")
    before = tree_hashes(root)
    monkeypatch.setenv("PATH", path_with_only_git(tmp_path / "bin"))
    state = run_workflow(
        root, learning, targets=["ledgerly"], auto_apply=True, sandbox=SandboxMode.required
    )
    assert state.phase is RunPhase.failed
    assert "sandbox required" in state.message and "bwrap is not on PATH" in state.message
    assert state.accepted == [] and tree_hashes(root) == before
