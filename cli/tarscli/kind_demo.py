"""The self-coding demo in a cluster, for `tarscli demo self-code-demo --kind | --cluster`.

`--kind` creates a kind cluster from examples/kind/cluster.yaml (it mounts the sample
project on the node at /srv/tars/sample-project), builds the operator and replica images
with docker and loads them into the cluster. Both modes then install the chart, give the
coordinator TarsReplica the project's directory as a volume, start a SelfCodingRun with a
`volume` source on it, stream its status and print its diff.

The external commands are built as data (`Step`) by pure functions, so what the demo runs
is testable where docker is not available; `--dry-run` prints them.
"""

from __future__ import annotations

import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from tars_api.names import CLI_LABELS
from tars_api.replica import ReplicaVolume, TarsReplica
from tars_api.run import SelfCodingRun
from tars_api.vocabulary import Role
from tars_engine.core.settings import ENGINE_VERSION

from tarscli import coordinator_access
from tarscli.cluster_ops import create_if_absent, follow_run, report_patch, wait_for_replicas
from tarscli.errors import fail
from tarscli.kube import Cluster, connect

KIND_CLUSTER = "tars"
NODE_PROJECT_PATH = "/srv/tars/sample-project"
RELEASE = "tars"
DEMO_NAMESPACE = "tars-demo"
DEMO_RUN = "sample-project"
PROJECT_VOLUME = "sample-project"
OPERATOR_TARGET = "operator"
REPLICA_TARGET = "replica"
REPLICAS_TIMEOUT_SECONDS = 600
COMMAND_TIMEOUT_SECONDS = 1800


@dataclass(frozen=True)
class Step:
    """One external command of the demo."""

    description: str
    argv: tuple[str, ...]
    needs_docker: bool = False

    def __str__(self) -> str:
        return shlex.join(self.argv)


def image(target: str, version: str = ENGINE_VERSION) -> str:
    return f"tars-{target}:{version}"


def kind_steps(repository: Path, cluster_name: str = KIND_CLUSTER) -> list[Step]:
    """Create the kind cluster, build both images and load them into its node."""
    dockerfile = str(repository / "replica-images" / "Dockerfile")
    steps = [
        Step(
            f"create kind cluster {cluster_name} (mounts the sample project)",
            (
                "kind",
                "create",
                "cluster",
                "--name",
                cluster_name,
                "--config",
                str(repository / "examples" / "kind" / "cluster.yaml"),
            ),
            needs_docker=True,
        )
    ]
    for target in (OPERATOR_TARGET, REPLICA_TARGET):
        steps.append(
            Step(
                f"build image {image(target)}",
                (
                    "docker",
                    "build",
                    "-f",
                    dockerfile,
                    "--target",
                    target,
                    "-t",
                    image(target),
                    str(repository),
                ),
                needs_docker=True,
            )
        )
    for target in (OPERATOR_TARGET, REPLICA_TARGET):
        steps.append(
            Step(
                f"load {image(target)} into the cluster's node",
                ("kind", "load", "docker-image", image(target), "--name", cluster_name),
                needs_docker=True,
            )
        )
    return steps


def chart_step(
    repository: Path,
    namespace: str,
    *,
    helm: str = "helm",
    kubeconfig: Path | None = None,
    context: str | None = None,
    settings: Sequence[str] = (),
) -> Step:
    """Install (or upgrade) the chart; the operator watches the demo's namespace."""
    argv = [
        helm,
        "upgrade",
        "--install",
        RELEASE,
        str(repository / "charts" / "tars"),
        "--namespace",
        namespace,
        "--create-namespace",
        "--set",
        f"image.tag={ENGINE_VERSION}",
        "--set",
        f"replicaImage.tag={ENGINE_VERSION}",
        *(argument for setting in settings for argument in ("--set", setting)),
    ]
    if kubeconfig is not None:
        argv += ["--kubeconfig", str(kubeconfig)]
    if context is not None:
        argv += ["--kube-context", context]
    return Step(f"install the chart in namespace {namespace}", tuple(argv))


def demo_steps(
    repository: Path,
    *,
    kind: bool,
    namespace: str = DEMO_NAMESPACE,
    helm: str = "helm",
    kubeconfig: Path | None = None,
    context: str | None = None,
    settings: Sequence[str] = (),
) -> list[Step]:
    """Every external command, in order: kind and images (with --kind), then the chart."""
    steps = kind_steps(repository) if kind else []
    if kind and context is None:
        context = f"kind-{KIND_CLUSTER}"
    return [
        *steps,
        chart_step(
            repository,
            namespace,
            helm=helm,
            kubeconfig=kubeconfig,
            context=context,
            settings=settings,
        ),
    ]


def run_manifest(repository: Path, namespace: str, project_path: str) -> SelfCodingRun:
    """examples/runs/volume-run.yaml, pointed at `project_path` on the node."""
    document: dict[str, Any] = yaml.safe_load(
        (repository / "examples" / "runs" / "volume-run.yaml").read_text()
    )
    document["metadata"]["namespace"] = namespace
    # A fresh name per demo: an earlier run of the demo may still be going away.
    document["metadata"]["name"] = f"{document['metadata']['name']}-{secrets.token_hex(3)}"
    document["spec"]["source"]["volume"]["hostPath"] = project_path
    return SelfCodingRun.model_validate(document)


def coordinator_replica(namespace: str, project_path: str) -> TarsReplica:
    """The coordinator, with the project's node directory mounted where the run names it."""
    replica = TarsReplica.build(
        Role.coordinator.value, Role.coordinator, namespace=namespace, labels=CLI_LABELS
    )
    replica.spec.volumes = [ReplicaVolume(name=PROJECT_VOLUME, host_path=project_path)]
    return replica


def _execute(step: Step, repository: Path, console: Console) -> None:
    console.print(f"[bold]{step.description}[/]: {step}")
    if shutil.which(step.argv[0]) is None:
        fail(f"{step.argv[0]} is not installed; it is needed to {step.description}")
    # kind resolves the cluster config's relative hostPath against the working directory.
    result = subprocess.run(step.argv, cwd=repository, check=False, timeout=COMMAND_TIMEOUT_SECONDS)
    if result.returncode != 0:
        fail(f"{step.description} failed (exit {result.returncode}): {step}")


def _prepare_replicas(
    cluster: Cluster, project_path: str, console: Console, timeout_seconds: int
) -> None:
    for line in coordinator_access.ensure(cluster.api_client, cluster.namespace):
        console.print(line)
    wanted = [coordinator_replica(cluster.namespace, project_path)] + [
        TarsReplica.build(role.value, role, namespace=cluster.namespace, labels=CLI_LABELS)
        for role in (Role.analyzer, Role.generator, Role.tester)
    ]
    replicas = []
    for replica in wanted:
        created = create_if_absent(cluster, replica)
        if created is not None:
            replicas.append(created)
            console.print(f"tarsreplica/{replica.name} created")
            continue
        volumes = [volume.to_dict() for volume in replica.spec.volumes]
        if volumes:
            replicas.append(
                cluster.replicas.merge_patch(replica.name, {"spec": {"volumes": volumes}})
            )
        else:
            replicas.append(cluster.replicas.get(replica.name))
        console.print(f"tarsreplica/{replica.name} exists")
    wait_for_replicas(cluster, replicas, timeout_seconds, time.monotonic() + timeout_seconds)


def run_demo(
    repository: Path,
    *,
    kind: bool,
    project_path: str,
    namespace: str,
    helm: str,
    kubeconfig: Path | None,
    context: str | None,
    dry_run: bool,
    settings: Sequence[str] = (),
    timeout_seconds: int = REPLICAS_TIMEOUT_SECONDS,
) -> None:
    console = Console()
    steps = demo_steps(
        repository,
        kind=kind,
        namespace=namespace,
        helm=helm,
        kubeconfig=kubeconfig,
        context=context,
        settings=settings,
    )
    if dry_run:
        for step in steps:
            typer.echo(str(step))
        return
    for step in steps:
        _execute(step, repository, console)
    if kind and context is None:
        context = f"kind-{KIND_CLUSTER}"
    cluster = connect(kubeconfig, context, namespace)
    cluster.require_crds()
    _prepare_replicas(cluster, project_path, console, timeout_seconds)
    run = run_manifest(repository, namespace, project_path)
    created = cluster.runs.create(run)
    console.print(f"selfcodingrun/{created.name} created")
    finished = follow_run(cluster, created.name, console)
    if finished is None:
        fail(f"selfcodingrun/{created.name} disappeared while it was followed")
    console.print(report_patch(cluster, finished), markup=False, highlight=False)


def repository_root() -> Path:
    """The source tree this CLI runs from: the chart, the Dockerfile and the examples."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "charts" / "tars" / "Chart.yaml").is_file():
        fail(f"the cluster demo needs the TARS source tree (charts/tars is not under {root})")
    return root
