"""`tarscli demo self-code-demo` (what `make demo` runs) end to end, and the sample it ships."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.harness.projects import tree_hashes
from tests.harness.workflow import SAMPLE_PROJECT, project_tests_pass

TARSCLI = Path(sys.executable).parent / "tarscli"


def demo(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "OLLAMA_HOST"}
    env.update(
        TARS_SCRATCH_DIR=str(tmp_path / "scratch"), TMPDIR=str(tmp_path), COLUMNS="200", **extra
    )
    return subprocess.run(
        [str(TARSCLI), "demo", "self-code-demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_demo_applies_several_improvements_with_tests_green(tmp_path: Path) -> None:
    shipped = tree_hashes(SAMPLE_PROJECT)

    result = demo(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "tests before:" in out and "tests after:" in out
    for stage in ("Scanning", "Analyzing", "Generating", "Testing", "Applying", "Learning"):
        assert f"▸ {stage}" in out
    assert "diff --git a/ledgerly/" in out and "tars: fix" in out
    applied = int(out.split(" improvements applied, tests green")[0].rsplit(maxsplit=1)[-1])
    assert applied >= 5
    # The shipped sample is never touched, and the demo cleans up after itself.
    assert tree_hashes(SAMPLE_PROJECT) == shipped
    assert not list(tmp_path.glob("tars-demo-*"))


def test_demo_without_its_sample_project_is_a_one_line_error(tmp_path: Path) -> None:
    result = demo(tmp_path, TARS_SAMPLE_PROJECT=str(tmp_path / "missing"))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: TARS_SAMPLE_PROJECT={tmp_path / 'missing'} is not the sample project (no pyproject.toml)"
    ]


def test_sample_project_is_real_and_green() -> None:
    assert project_tests_pass(SAMPLE_PROJECT)
