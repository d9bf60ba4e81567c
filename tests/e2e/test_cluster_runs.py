"""SelfCodingRuns through the operator and the four role replicas, driven by `tarscli`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import Workspace, git

MAX_FILES = "3"


def run_object(workspace: Workspace, kubectl: Any, name: str) -> dict[str, Any]:
    return workspace.kubectl_json(kubectl, "selfcodingrun", name)


def started_run(workspace: Workspace, project: Path, *extra: str) -> str:
    """`tarscli self-code start -t ledgerly` in `project`; the run's name."""
    started = workspace.tarscli(
        "self-code", "start", "-t", "ledgerly", "--max-files", MAX_FILES, *extra, cwd=project
    )
    # stdout is the run's name alone (the rest goes to stderr), for scripts.
    return started.stdout.strip()


def sample_tests_pass(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_start_watch_diff_apply(workspace: Workspace, kubectl: Any, sample_project: Path) -> None:
    name = started_run(workspace, sample_project)
    watched = workspace.tarscli("self-code", "status", name, "--watch", cwd=sample_project)
    assert "Succeeded" in watched.stdout, watched.stdout
    run = run_object(workspace, kubectl, name)
    status = run["status"]
    assert status["phase"] == "Succeeded", status
    assert status["statistics"]["improvementsAccepted"] >= 1, status
    assert status["reportConfigMap"] == f"{name}-report"
    report = workspace.kubectl_json(kubectl, "configmap", status["reportConfigMap"])
    assert report["metadata"]["ownerReferences"][0]["uid"] == run["metadata"]["uid"]
    results = json.loads(report["data"]["report.json"])
    assert results["statistics"] == status["statistics"]

    patch = workspace.tarscli("self-code", "diff", name, cwd=sample_project).stdout
    assert patch == report["data"]["patch.diff"]
    assert patch.startswith("--- a/ledgerly/"), patch[:200]

    applied = workspace.tarscli("self-code", "apply", name, cwd=sample_project)
    assert "applied to" in applied.stdout
    changed = git(sample_project, "diff", "--name-only").split()
    assert changed and all(path.startswith("ledgerly/") for path in changed), changed
    after = sample_tests_pass(sample_project)
    assert after.returncode == 0, after.stdout + after.stderr

    again = workspace.tarscli("self-code", "apply", name, cwd=sample_project, check=False)
    assert again.returncode != 0
    assert again.stderr.startswith("error: the patch of selfcodingrun/")
    assert len(again.stderr.strip().splitlines()) == 1
    assert git(sample_project, "diff", "--name-only").split() == changed, "nothing half-applied"
