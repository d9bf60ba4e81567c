"""`tarscli self-code run|improve|status --local` as a user runs them: a real process per command.

Every bad input must end with one `error: ...` line on stderr, a non-zero exit, and
the project's bytes untouched.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from tars_api.run import RunPhase
from tars_engine.core.learning import LearningStore
from tars_engine.core.snapshot import DEFAULT_MAX_EXTRACTED_BYTES
from tars_engine.core.state import StateStore

from tests.harness.cli import TARSCLI, cli_env, tarscli
from tests.harness.hostile import HOSTILE_TEST_FILE, SECRET_VARIABLE, hostile_tests, leftovers
from tests.harness.ollama import OllamaServer
from tests.harness.projects import tree_hashes, write_tree
from tests.harness.tools import git, git_init, path_with_only_git
from tests.harness.workflow import project_tests_pass, sample_project, shop_project


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_run_with_auto_apply_then_status(tmp_path: Path, env: dict[str, str]) -> None:
    root = sample_project(tmp_path / "ledgerly")
    start = git(root, "rev-parse", "HEAD").strip()

    result = tarscli(root, env, "self-code", "run", "-t", "ledgerly", "--auto-apply")

    assert result.returncode == 0, result.stderr
    assert "Applied" in result.stdout and "commits in" in result.stdout
    for stage in ("Scanning", "Analyzing", "Generating", "Testing", "Applying"):
        assert f"▸ {stage}" in result.stdout
    commits = int(git(root, "rev-list", "--count", f"{start}..HEAD"))
    assert commits >= 5
    assert git(root, "status", "--porcelain") == ""
    assert project_tests_pass(root)

    shown = tarscli(root / "ledgerly", env, "self-code", "status", "--local")
    assert shown.returncode == 0, shown.stderr
    assert "Succeeded" in shown.stdout and "ledgerly/money.py" in shown.stdout
    document = json.loads(tarscli(root, env, "self-code", "status", "--local", "-o", "json").stdout)
    assert document["phase"] == "Succeeded"
    assert document["statistics"]["improvementsApplied"] == commits


def test_run_without_auto_apply_writes_a_patch(tmp_path: Path, env: dict[str, str]) -> None:
    root = shop_project(tmp_path / "shop")
    before = tree_hashes(root)

    # Run from outside the project: the target's repository is the project.
    result = tarscli(tmp_path, env, "self-code", "run", "-t", str(root / "shop"))

    assert result.returncode == 0, result.stderr
    assert tree_hashes(root) == before
    patch = next(root.glob(".tars/patches/*.patch"))
    assert str(patch) in result.stdout.replace("\n", "")
    git(root, "apply", "--check", str(patch))


def test_improve_one_file(tmp_path: Path, env: dict[str, str]) -> None:
    root = shop_project(tmp_path / "shop")
    result = tarscli(root / "shop", env, "self-code", "improve", "names.py", "-a")
    assert result.returncode == 0, result.stderr
    assert git(root, "diff", "--name-only", "HEAD~1", "HEAD").split() == ["shop/names.py"]
    assert "Item: {}" not in (root / "shop" / "names.py").read_text()
    # Outside git the project is the nearest directory with a pyproject.toml: tests are found.
    plain = shop_project(tmp_path / "plain", repository=False)
    before = tree_hashes(plain)
    patch_only = tarscli(plain / "shop", env, "self-code", "improve", "names.py")
    assert patch_only.returncode == 0, patch_only.stderr
    assert tree_hashes(plain) == before
    assert "shop/names.py" in next(plain.glob(".tars/patches/*.patch")).read_text()


def test_bad_targets_and_options(tmp_path: Path, env: dict[str, str]) -> None:
    root = shop_project(tmp_path / "shop")
    plain = shop_project(tmp_path / "plain", repository=False)
    write_tree(root, {"docs/README.md": "How to shop\n"})
    before, plain_before = tree_hashes(root), tree_hashes(plain)
    closed_port = socket.socket()
    closed_port.bind(("127.0.0.1", 0))
    ollama_down = {**env, "OLLAMA_HOST": f"127.0.0.1:{closed_port.getsockname()[1]}"}

    cases = [
        (root, env, ["run", "-t", "shop/names.py"], ["is not a directory"]),
        (root, env, ["run", "-t", "docs"], ["no Python files in 'docs'", "nothing to improve"]),
        (root, env, ["run", "-t", "nowhere"], ["does not exist"]),
        (root, env, ["run", "-t", str(tmp_path)], ["outside the project"]),
        (plain, env, ["run", "-t", "shop", "-a"], ["auto-apply refused", "not a git repository"]),
        (
            root,
            ollama_down,
            ["run", "-t", "shop", "--engine", "ollama"],
            ["no Ollama server answers"],
        ),
        (
            root,
            env,
            ["run", "-t", "shop", "--test-command", "pytest 'unclosed"],
            ["not a valid command line"],
        ),
        (root, env, ["improve", "tests/test_shop.py"], ["is a test file"]),
        (root, env, ["improve", "pyproject.toml"], ["is not a Python file"]),
        (root, env, ["improve", "shop/missing.py"], ["is not a file"]),
    ]
    for cwd, variables, arguments, fragments in cases:
        assert_one_line_error(tarscli(cwd, variables, "self-code", *arguments), *fragments)
    closed_port.close()
    assert tree_hashes(root) == before and tree_hashes(plain) == plain_before


def test_a_model_the_server_lacks_is_refused_before_any_work(
    tmp_path: Path, env: dict[str, str], ollama_server: OllamaServer
) -> None:
    root = shop_project(tmp_path / "shop")
    before = tree_hashes(root)
    with_ollama = {**env, "OLLAMA_HOST": ollama_server.url}
    result = tarscli(
        root, with_ollama, "self-code", "run", "-t", "shop", "--engine", "ollama", "--model", "nope"
    )
    assert_one_line_error(result, "model nope is not on the Ollama server", "ollama pull nope")
    assert not (root / ".tars" / "workflow-state.json").exists()
    assert tree_hashes(root) == before


def test_ctrl_c_during_testing_stops_the_run_with_exit_130(
    tmp_path: Path, env: dict[str, str]
) -> None:
    root = shop_project(tmp_path / "shop")
    before = tree_hashes(root)
    # A test command that is still running when the interrupt comes.
    slow = f"{sys.executable} -c 'import time; time.sleep(120)'"
    run = subprocess.Popen(
        [str(TARSCLI), "self-code", "run", "-t", "shop", "--test-command", slow],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        state_file = root / ".tars" / "workflow-state.json"
        for _ in range(600):
            if state_file.exists() and '"stage":"Testing"' in state_file.read_text().replace(
                " ", ""
            ):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the run never reached Testing")
        run.send_signal(signal.SIGINT)
        stdout, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr
    assert StateStore(root / ".tars").load().phase is RunPhase.stopped  # type: ignore[union-attr]
    assert tree_hashes(root) == before


def test_bad_files_are_reported_and_left_alone(tmp_path: Path, env: dict[str, str]) -> None:
    root = shop_project(tmp_path / "shop")
    (root / "shop" / "blob.py").write_bytes(b"\x00\x01\x02binary")
    write_tree(
        root,
        {
            "shop/broken.py": "import os\ndef broken(:\n",
            "shop/huge.py": "import os\n" + "x = 1\n" * 60000,
        },
    )
    git(root, "add", "-A")
    git(root, "-c", "user.name=T", "-c", "user.email=t@e", "commit", "-qm", "bad files")
    before = tree_hashes(root)

    for name, fragment in (
        ("blob.py", "binary"),
        ("broken.py", "syntax error at line 2"),
        ("huge.py", "too-large"),
    ):
        result = tarscli(root, env, "self-code", "improve", f"shop/{name}", "-a")
        assert_one_line_error(result, f"shop/{name} was not improved", fragment)
    assert tree_hashes(root) == before


def test_failing_and_hanging_tests_stop_the_run(tmp_path: Path, env: dict[str, str]) -> None:
    root = shop_project(tmp_path / "shop")
    head = git(root, "rev-parse", "HEAD")
    before = tree_hashes(root)

    hanging = tarscli(
        root, env, "self-code", "run", "-t", "shop", "-a",
        "--test-command", f"{sys.executable} -c 'import time; time.sleep(3600)'",
        "--test-timeout", "2",
    )  # fmt: skip
    assert_one_line_error(hanging, "tests fail before any change", "timed out")

    write_tree(root, {"tests/test_broken.py": "def test_broken():\n    assert False\n"})
    failing = tarscli(root, env, "self-code", "run", "-t", "shop", "-a")
    assert_one_line_error(failing, "tests fail before any change")

    (root / "tests" / "test_broken.py").unlink()
    assert tree_hashes(root) == before and git(root, "rev-parse", "HEAD") == head


def test_status_and_stop_without_a_local_run(tmp_path: Path, env: dict[str, str]) -> None:
    root = shop_project(tmp_path / "shop")
    assert_one_line_error(tarscli(root, env, "self-code", "status", "--local"), "no local run")
    assert_one_line_error(tarscli(root, env, "self-code", "stop", "--local"), "no local run")


def test_stop_local_asks_a_running_run_to_stop(tmp_path: Path, env: dict[str, str]) -> None:
    root = shop_project(tmp_path / "shop")
    assert tarscli(root, env, "self-code", "run", "-t", "shop").returncode == 0
    store = StateStore(root / ".tars")
    assert_one_line_error(
        tarscli(root, env, "self-code", "stop", "--local"), "no local run is going on"
    )
    # A run in progress (here: one whose process died) is asked to stop through its stop file.
    state = store.load()
    assert state is not None
    state.phase = RunPhase.running
    store.save(state)
    stopped = tarscli(root / "shop", env, "self-code", "stop", "--local")
    assert stopped.returncode == 0, stopped.stderr
    assert "stop requested" in stopped.stdout and store.stop_file.exists()


def project_venv_with(root: Path, module: str, source: str) -> Path:
    """A real virtualenv in the project holding `module`, with pytest visible through a .pth."""
    venv = root / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site_packages,) = venv.glob("lib/python3.*/site-packages")
    pytest_home = Path(pytest.__file__).resolve().parent.parent
    (site_packages / "tars_test_pytest.pth").write_text(f"{pytest_home}\n", encoding="utf-8")
    (site_packages / f"{module}.py").write_text(source, encoding="utf-8")
    return venv


def test_run_uses_the_projects_own_virtualenv_for_its_tests(
    tmp_path: Path, env: dict[str, str]
) -> None:
    root = write_tree(
        tmp_path / "shop",
        {
            "pyproject.toml": '[project]\nname = "shop"\nversion = "0"\n',
            ".gitignore": ".venv/\n",
            "shop/__init__.py": "",
            "shop/prices.py": "import os\n\n\ndef total(items):\n    return sum(items)\n",
            "tests/test_prices.py": (
                "from only_in_project_venv import TAX\n"
                "from shop.prices import total\n\n\n"
                "def test_total():\n    assert total([1, 2]) * TAX == 3\n"
            ),
        },
    )
    project_venv_with(root, "only_in_project_venv", "TAX = 1\n")
    git_init(root, "base")

    result = tarscli(root, env, "self-code", "run", "-t", "shop", "--auto-apply")

    assert result.returncode == 0, result.stderr + result.stdout
    assert "import os" not in (root / "shop" / "prices.py").read_text(encoding="utf-8")
    assert git(root, "status", "--porcelain") == ""


def test_sandbox_required_without_bwrap_and_an_unset_test_env_are_refused(
    tmp_path: Path, env: dict[str, str]
) -> None:
    root = shop_project(tmp_path / "shop")
    before = tree_hashes(root)
    # A PATH without bwrap, the real way a machine lacks it: only git, which the CLI needs.
    without_bwrap = {**env, "PATH": path_with_only_git(tmp_path / "bin")}
    refused = tarscli(
        root, without_bwrap, "self-code", "run", "-t", "shop", "--sandbox", "required"
    )
    assert_one_line_error(refused, "--sandbox required", "bwrap is not on PATH", "bubblewrap")
    unset = {key: value for key, value in env.items() if key != "TARS_UNSET_FOR_TEST"}
    missing = tarscli(
        root, unset, "self-code", "run", "-t", "shop", "--test-env", "TARS_UNSET_FOR_TEST"
    )
    assert_one_line_error(missing, "--test-env TARS_UNSET_FOR_TEST", "not set")
    bad_name = tarscli(root, env, "self-code", "run", "-t", "shop", "--test-env", "A-B")
    assert_one_line_error(bad_name, "is not a variable name")
    assert tree_hashes(root) == before


def test_a_sandboxed_run_shows_its_sandbox_in_the_status(
    tmp_path: Path, env: dict[str, str]
) -> None:
    root = shop_project(tmp_path / "shop")
    result = tarscli(root, env, "self-code", "run", "-t", "shop", "--sandbox", "required")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "Sandbox" in result.stdout and "bwrap" in result.stdout
    status = tarscli(root, env, "self-code", "status", "--local", "-o", "json")
    sandbox = json.loads(status.stdout)["sandbox"]
    assert sandbox["isolated"] and sandbox["mode"] == "required" and not sandbox["network"]


def test_a_hostile_projects_escapes_fail_and_its_tree_stays_as_it_was(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """A copy of the sample project with tests that try every escape; MY_SECRET_TOKEN exported."""
    root = tmp_path / "sample"
    marker = f"tars-leftover-{uuid.uuid4().hex}"
    secret = f"s3cret-{uuid.uuid4().hex}"
    with socket.create_server(("127.0.0.1", 0)) as listener:
        escapes = hostile_tests(
            root, Path(env["TARS_SCRATCH_DIR"]), listener.getsockname()[1], marker
        )
        sample_project(root)
        write_tree(root, {HOSTILE_TEST_FILE: escapes})
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "hostile tests")
        before = tree_hashes(root)
        result = tarscli(
            root, {**env, SECRET_VARIABLE: secret}, "self-code", "run", "-t", "ledgerly"
        )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "bwrap" in result.stdout
    assert tree_hashes(root) == before  # no auto-apply: the improvements are in a patch
    state = StateStore(root / ".tars").load()
    assert state is not None and state.accepted, result.stdout
    assert state.sandbox is not None and state.sandbox.isolated
    written = result.stdout + result.stderr + (root / ".tars" / "workflow-state.json").read_text()
    assert secret not in written
    assert leftovers(marker) == []


def test_a_corrupt_learning_database_is_moved_aside_and_the_run_goes_on(
    tmp_path: Path, env: dict[str, str]
) -> None:
    root = shop_project(tmp_path / "shop")
    database = Path(env["TARS_LEARNING_DB"])
    garbage = b"SQLite format 3\x00" + bytes(range(256)) * 8
    database.write_bytes(garbage)

    result = tarscli(root, env, "self-code", "run", "-t", "shop")

    assert result.returncode == 0, result.stderr
    [warning] = [line for line in result.stderr.splitlines() if line.strip()]
    [moved] = tmp_path.glob("learning.sqlite3.corrupt-*")
    assert warning.startswith(f"warning: the learning database {database} is corrupt")
    assert f"moved it to {moved} and started a fresh one" in warning
    assert moved.read_bytes() == garbage
    # The run learned in the fresh store, which only its owner can read.
    assert LearningStore(database).count() > 0
    assert database.stat().st_mode & 0o777 == 0o600


def test_no_learning_keeps_the_run_out_of_the_learning_store(
    tmp_path: Path, env: dict[str, str]
) -> None:
    root = shop_project(tmp_path / "shop")
    # A store that would fail any read or write, and be moved aside if it were opened.
    database = Path(env["TARS_LEARNING_DB"])
    database.write_bytes(b"not a database")

    result = tarscli(root, env, "self-code", "run", "-t", "shop", "--no-learning")

    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    assert database.read_bytes() == b"not a database"
    assert not list(tmp_path.glob("learning.sqlite3.corrupt-*"))
    assert "learning off" in result.stdout
    shown = tarscli(root, env, "self-code", "status", "--local")
    assert "Learning      off" in shown.stdout
    document = json.loads(tarscli(root, env, "self-code", "status", "--local", "-o", "json").stdout)
    assert document["options"]["learning"] is False
    assert document["message"].endswith("; learning off")


def test_an_unusable_learning_database_is_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    root = shop_project(tmp_path / "shop")
    before = tree_hashes(root)
    Path(env["TARS_LEARNING_DB"]).mkdir()
    result = tarscli(root, env, "self-code", "run", "-t", "shop")
    assert_one_line_error(
        result, f"cannot use the learning database {env['TARS_LEARNING_DB']}: Is a directory"
    )
    assert tree_hashes(root) == before


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'\xff\xfe{"runId": "r1"}', "byte 0xff at offset 0 is not UTF-8 text"),
        (b'{"version": 1, "runId": ', "not JSON (line 1, column 25"),
        (b'{"version": 99, "runId": "r1"}', "written by a newer TARS (state version 99"),
        (b'{"version": 1, "runId": 7}', "runId: Input should be a valid string"),
    ],
    ids=["not-utf-8", "not-json", "newer-version", "wrong-field"],
)
def test_an_unusable_state_file_is_one_line(
    tmp_path: Path, env: dict[str, str], content: bytes, fragment: str
) -> None:
    root = shop_project(tmp_path / "shop")
    state_file = root / ".tars" / "workflow-state.json"
    state_file.parent.mkdir()
    state_file.write_bytes(content)
    for command in (["status", "--local"], ["run", "-t", "shop"], ["stop", "--local"]):
        result = tarscli(root, env, "self-code", *command)
        assert_one_line_error(result, str(state_file), fragment, "move it away to start afresh")
    assert state_file.read_bytes() == content


def test_a_project_above_the_snapshot_limit_is_one_line(
    tmp_path: Path, env: dict[str, str]
) -> None:
    root = shop_project(tmp_path / "shop")
    # Sparse: 2 GiB and a byte as the project's files count, nothing on the disk.
    with open(root / "recording.bin", "wb") as huge:
        huge.truncate(DEFAULT_MAX_EXTRACTED_BYTES + 1)
    result = tarscli(root, env, "self-code", "run", "-t", "shop")
    assert_one_line_error(
        result, f"the project {root} holds", f"above the {DEFAULT_MAX_EXTRACTED_BYTES:,} bytes"
    )
    assert "internal error" not in result.stderr + result.stdout
