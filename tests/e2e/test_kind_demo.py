"""The cluster demo: the kind commands as data (docker cannot run here), and `--cluster`
for real against the local control plane with the pod runner: the chart's operator pod,
the four replicas, a volume run on a copy of the sample project, its diff."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tars_engine.core.settings import ENGINE_VERSION
from tarscli.kind_demo import KIND_CLUSTER, demo_steps

from tests.harness.e2e import SAMPLE_PROJECT
from tests.harness.kubectl import REPOSITORY
from tests.harness.tools import git, git_init

TARSCLI = Path(sys.executable).parent / "tarscli"
DOCKERFILE = REPOSITORY / "replica-images" / "Dockerfile"


def test_kind_steps_create_build_load_then_install() -> None:
    steps = demo_steps(REPOSITORY, kind=True)
    commands = [step.argv[:2] for step in steps]
    assert commands == [
        ("kind", "create"),
        ("docker", "build"),
        ("docker", "build"),
        ("kind", "load"),
        ("kind", "load"),
        ("helm", "upgrade"),
    ]
    assert all(step.needs_docker for step in steps[:-1]) and not steps[-1].needs_docker
    create = steps[0].argv
    config = Path(create[create.index("--config") + 1])
    assert config.is_file() and "containerPath: /srv/tars/sample-project" in config.read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", DOCKERFILE.read_text(), re.MULTILINE))
    built = []
    for step in steps[1:3]:
        argv = step.argv
        assert argv[argv.index("--target") + 1] in stages
        assert Path(argv[argv.index("-f") + 1]) == DOCKERFILE
        built.append(argv[argv.index("-t") + 1])
    loaded = [step.argv[3] for step in steps[3:5]]
    assert loaded == built == [f"tars-operator:{ENGINE_VERSION}", f"tars-replica:{ENGINE_VERSION}"]
    assert all(step.argv[-2:] == ("--name", KIND_CLUSTER) for step in steps[3:5])
    install = steps[-1].argv
    assert install[-2:] == ("--kube-context", f"kind-{KIND_CLUSTER}")
    assert Path(install[4]) == REPOSITORY / "charts" / "tars"


def test_cluster_mode_installs_the_chart_only() -> None:
    steps = demo_steps(REPOSITORY, kind=False, kubeconfig=Path("/k"), settings=["a=b"])
    assert [step.argv[:2] for step in steps] == [("helm", "upgrade")]
    assert ("--set", "a=b") == steps[0].argv[-4:-2]


def test_cluster_demo_on_the_local_control_plane(
    kubeconfig: Path,
    kubectl: Callable[..., Any],
    tars_crds: list[str],
    pod_runner: object,
    control_plane: Any,
    tmp_path: Path,
) -> None:
    project = tmp_path / "sample-project"
    shutil.copytree(
        SAMPLE_PROJECT, project, ignore=shutil.ignore_patterns(".ruff_cache", "__pycache__")
    )
    git_init(project, "sample project")
    namespace = f"demo-{os.getpid()}"
    try:
        result = subprocess.run(
            [
                str(TARSCLI),
                "demo",
                "self-code-demo",
                "--cluster",
                "--helm",
                str(control_plane.tools_dir / "helm"),
                # The operator pod shares this machine's ports with the replicas (8080).
                "--helm-set",
                "operator.livenessPort=18080",
                "--helm-set",
                "operator.metricsPort=19090",
                "--timeout",
                "180",
                "--project-path",
                str(project),
                "--kubeconfig",
                str(kubeconfig),
                "-n",
                namespace,
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env={
                **os.environ,
                "COLUMNS": "200",
                "HELM_CACHE_HOME": str(tmp_path / "helm"),
                "HELM_CONFIG_HOME": str(tmp_path / "helm"),
                "HELM_DATA_HOME": str(tmp_path / "helm"),
            },
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Succeeded" in result.stdout, result.stdout
        assert "--- a/ledgerly/" in result.stdout
        commits = git(project, "log", "--format=%s").splitlines()
        assert len(commits) > 1, "auto-apply commits improvements in place"
        tests = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=project,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert tests.returncode == 0, tests.stdout
    finally:
        pods = kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False)
        print(pods.stdout)
        for role in ("analyzer", "coordinator"):
            logs = kubectl(
                "logs",
                "-n",
                namespace,
                "-l",
                f"app.kubernetes.io/instance={role}",
                "--previous",
                check=False,
            )
            print(role, logs.stdout[-3000:], logs.stderr[-500:])
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.mark.parametrize("flags", [["--kind", "--cluster"]])
def test_kind_and_cluster_exclude_each_other(flags: list[str]) -> None:
    result = subprocess.run(
        [str(TARSCLI), "demo", "self-code-demo", *flags],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert result.stderr.strip() == "error: --kind and --cluster exclude each other"
