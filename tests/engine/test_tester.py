"""The tester in-process and the snapshot format, on real temporary projects."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import textwrap
from pathlib import Path

import psutil
import pytest
from tars_api.vocabulary import EngineName, SandboxMode
from tars_engine.core.diffs import make_unified_diff
from tars_engine.core.models import Candidate, SnapshotRef, TestRequest
from tars_engine.core.role_set import SnapshotMissingError
from tars_engine.core.settings import ReplicaSettings
from tars_engine.core.snapshot import SnapshotError, extract_snapshot, pack_project, project_files
from tars_engine.roles.tester import Tester, detect_test_command, import_roots, trim_output

from tests.harness.projects import CALC, calc_project, tree_hashes, write_tree
from tests.harness.tools import git_init

RUN_ID = "run-1"


@pytest.fixture
def tester(tmp_path: Path) -> Tester:
    return Tester(ReplicaSettings(scratch_dir=tmp_path / "scratch"))


def candidate_for(path: str, old: str, new: str, name: str = "c1") -> Candidate:
    return Candidate(
        id=name,
        path=path,
        base_sha256=hashlib.sha256(old.encode()).hexdigest(),
        diff=make_unified_diff(path, old, new),
        rationale="test",
        engine=EngineName.static,
    )


def run(tester: Tester, root: Path, candidates: list[Candidate], **kwargs: object):
    ref = tester.put_snapshot(RUN_ID, pack_project(root))
    return tester.run_tests(TestRequest(snapshot=ref, candidates=candidates, **kwargs))


def test_passing_suite_reports_junit_counts_and_leaves_the_tree_alone(
    tester: Tester, tmp_path: Path
) -> None:
    project = calc_project(tmp_path / "p")
    before = tree_hashes(project, leave_out={".git"})
    improved = CALC.replace("import os\nimport sys\n", "").replace("value == None", "value is None")
    result = run(tester, project, [candidate_for("calc.py", CALC, improved)])
    assert result.passed, result.output
    assert (result.tests_run, result.failures, result.errors) == (3, 0, 0)
    assert result.apply_error is None and not result.timed_out
    assert tree_hashes(project, leave_out={".git"}) == before
    assert list((tester.runs_dir).iterdir()) == []


def test_breaking_candidate_fails_with_counts(tester: Tester, tmp_path: Path) -> None:
    project = calc_project(tmp_path / "p")
    broken = CALC.replace("return a + b", "return a - b")
    result = run(tester, project, [candidate_for("calc.py", CALC, broken)])
    assert not result.passed
    assert (result.tests_run, result.failures) == (3, 1)
    assert "test_add" in result.output


def test_candidate_for_other_content_is_an_apply_error(tester: Tester, tmp_path: Path) -> None:
    project = calc_project(tmp_path / "p")
    stale = CALC.replace("add", "plus")
    result = run(tester, project, [candidate_for("calc.py", stale, stale + "\n# more\n")])
    assert not result.passed
    assert result.apply_error is not None and "differs" in result.apply_error


def test_diff_that_does_not_match_is_an_apply_error(tester: Tester, tmp_path: Path) -> None:
    project = calc_project(tmp_path / "p")
    candidate = candidate_for("calc.py", CALC, CALC + "x = 1\n")
    bad = candidate.model_copy(update={"diff": make_unified_diff("calc.py", "nope\n", "yes\n")})
    result = run(tester, project, [bad])
    assert result.apply_error is not None and "does not apply" in result.apply_error


def test_hanging_test_is_killed_with_its_whole_process_group(
    tester: Tester, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    hanging = textwrap.dedent(
        f"""\
        import subprocess, sys, time
        from pathlib import Path


        def test_hangs():
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            Path({str(pid_file)!r}).write_text(str(child.pid))
            time.sleep(600)
        """
    )
    project = calc_project(tmp_path / "p", extra={"tests/test_hang.py": hanging})
    # Unsandboxed, as without bwrap: in the sandbox the child's PID is the sandbox's own,
    # and the PID namespace takes it down (tests/engine/test_sandbox.py).
    # Long enough for pytest to start and spawn the child on a busy machine.
    result = run(tester, project, [], timeout_seconds=8, sandbox=SandboxMode.off)
    assert result.timed_out and not result.passed
    assert "process group was killed" in result.output
    child_pid = int(pid_file.read_text())
    # The sleeping grandchild was in the group; killpg took it down (reaped or a zombie at most).
    try:
        assert psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass


def test_tests_import_the_copy_not_an_editable_install(tester: Tester, tmp_path: Path) -> None:
    # tars_api is installed editable from this repository's crds/ directory; a project
    # with the same layout must still import its own copy.
    project = write_tree(
        tmp_path / "p",
        {
            "crds/tars_api/__init__.py": 'ORIGIN = "copy"\n',
            "tests/test_origin.py": "from tars_api import ORIGIN\n\n\n"
            "def test_origin():\n    assert ORIGIN == 'copy'\n",
        },
    )
    assert import_roots(project) == [project, project / "crds"]
    result = run(tester, project, [])
    assert result.passed and result.tests_run == 1, result.output


def test_given_command_runs_and_its_exit_code_decides(tester: Tester, tmp_path: Path) -> None:
    project = write_tree(tmp_path / "p", {"check.py": "import sys\nsys.exit(3)\n"})
    assert detect_test_command(project) is None
    result = run(tester, project, [], test_command=["python", "check.py"])
    assert not result.passed and result.command[1:] == ["check.py"]

    no_command = run(tester, project, [])
    assert not no_command.passed and "no test command" in no_command.output


def test_put_snapshot_is_idempotent_and_verifies(tester: Tester, tmp_path: Path) -> None:
    project = calc_project(tmp_path / "p")
    archive = pack_project(project)
    first = tester.put_snapshot(RUN_ID, archive)
    assert tester.put_snapshot(RUN_ID, archive) == first
    assert tester.has_snapshot(first)
    assert first.digest == hashlib.sha256(archive).hexdigest()
    missing = SnapshotRef(run_id=RUN_ID, digest="0" * 64)
    assert not tester.has_snapshot(missing)
    with pytest.raises(SnapshotMissingError):
        tester.run_tests(TestRequest(snapshot=missing, candidates=[]))
    with pytest.raises(SnapshotError):
        tester.put_snapshot(RUN_ID, b"not an archive")


def test_pack_is_deterministic_and_git_aware(tmp_path: Path) -> None:
    project = calc_project(tmp_path / "p", extra={".gitignore": "build/\n", "build/out.txt": "x"})
    (project / "__pycache__").mkdir()
    (project / "__pycache__" / "calc.cpython-311.pyc").write_bytes(b"\0")
    plain = project_files(project)
    assert "build/out.txt" in plain and not any("__pycache__" in name for name in plain)
    git_init(project)
    (project / "untracked.py").write_text("y = 2\n")
    listed = project_files(project)
    assert "build/out.txt" not in listed and "untracked.py" in listed and "calc.py" in listed
    first = pack_project(project)
    os.utime(project / "calc.py", (1, 1))
    assert pack_project(project) == first


def _link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _archive_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "member",
    [
        tarfile.TarInfo("../escape.txt"),
        tarfile.TarInfo("/abs.txt"),
        _link("link", tarfile.SYMTYPE, "../../etc"),
        _link("hard", tarfile.LNKTYPE, "calc.py"),
    ],
    ids=["dotdot", "absolute", "symlink-out", "hardlink"],
)
def test_unsafe_archives_are_refused(tmp_path: Path, member: tarfile.TarInfo) -> None:
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(_archive_with(member, b"x"))
    with pytest.raises(SnapshotError):
        extract_snapshot(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_trim_output_keeps_head_and_tail() -> None:
    text = "HEAD" + "x" * 50_000 + "TAIL"
    trimmed = trim_output(text)
    assert trimmed.startswith("HEAD") and trimmed.endswith("TAIL") and "trimmed" in trimmed
    assert len(trimmed) < 13_000
