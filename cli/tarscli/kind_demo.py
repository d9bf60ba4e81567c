"""The self-coding demo in a cluster, for `tarscli demo self-code-demo --kind | --cluster`.

`--kind` builds both images with hack/build-images.sh, creates a kind cluster from
examples/kind/cluster.yaml whose node mounts a git copy of the sample project (under
.dev/kind-<cluster>, owned by the replicas' user) at /srv/tars/sample-project, and loads the
images into it. kind runs its node with docker when a docker daemon answers, else with
podman (kind's podman provider); `--kind-node-image` names the node image, for machines
that cannot pull kind's own (`make kind-demo` builds one with hack/kind/build-kind.sh).
Both modes then install the chart, give the coordinator TarsReplica the project's
directory as a volume, start a SelfCodingRun with a `volume` source on it, stream its
status and print its diff.

The external commands are built as data (`Step`) by pure functions, so what the demo runs
is testable without docker, podman or kind; `--dry-run` prints them.
"""

from __future__ import annotations

import enum
import os
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from tars_api.names import CLI_LABELS, NON_ROOT_ID
from tars_api.replica import ReplicaVolume, TarsReplica
from tars_api.run import RunPhase, SelfCodingRun
from tars_api.vocabulary import Role
from tars_engine.core.applying import FALLBACK_IDENTITY
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
# kind's own switch to its podman provider, and hack/build-images.sh's choice of engine.
KIND_PROVIDER_ENV = "KIND_EXPERIMENTAL_PROVIDER"
IMAGE_ENGINE_ENV = "TARS_IMAGE_ENGINE"
DOCKER_INFO_TIMEOUT_SECONDS = 10
# kind's docker and podman providers bind-mount the host's kernel modules into every node,
# whatever the cluster's config says, and a container whose mount source is missing does not
# start.
HOST_MODULES = Path("/lib/modules")
# podman and buildah qualify an unqualified local tag with this registry.
PODMAN_LOCAL_REGISTRY = "localhost"


class Provider(enum.StrEnum):
    """What kind runs its node with, and what builds and hands it the images."""

    docker = "docker"
    podman = "podman"


@dataclass(frozen=True)
class Step:
    """One external command of the demo, with what it adds to the environment."""

    description: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        assignments = [f"{name}={shlex.quote(value)}" for name, value in self.env.items()]
        return " ".join([*assignments, shlex.join(self.argv)])


@dataclass(frozen=True)
class KindWorkspace:
    """The demo's own files on this machine: the project copy the node mounts, the cluster
    config that mounts it, and the image archives podman hands to kind."""

    root: Path

    @classmethod
    def of(cls, repository: Path, cluster_name: str = KIND_CLUSTER) -> KindWorkspace:
        """One per cluster: each mounts a copy of its own, which its runs commit into."""
        return cls(repository / ".dev" / f"kind-{cluster_name}")

    @property
    def project(self) -> Path:
        return self.root / "sample-project"

    @property
    def cluster_config(self) -> Path:
        return self.root / "cluster.yaml"

    def archive(self, target: str) -> Path:
        return self.root / f"tars-{target}.tar"


def image(target: str, version: str = ENGINE_VERSION) -> str:
    return f"tars-{target}:{version}"


def local_image(target: str, provider: Provider) -> str:
    """The image's name as the engine that built it lists it."""
    name = image(target)
    return f"{PODMAN_LOCAL_REGISTRY}/{name}" if provider is Provider.podman else name


def pick_provider(*, docker_answers: bool, podman_found: bool) -> Provider:
    """docker where its daemon answers, as kind does by default; else podman."""
    if docker_answers:
        return Provider.docker
    if podman_found:
        return Provider.podman
    fail("the kind demo needs docker (with its daemon running) or podman; neither is here")


def provider_here() -> Provider:
    docker = shutil.which(Provider.docker.value)
    answers = (
        docker is not None
        and subprocess.run(
            [docker, "info"],
            capture_output=True,
            check=False,
            timeout=DOCKER_INFO_TIMEOUT_SECONDS,
        ).returncode
        == 0
    )
    return pick_provider(
        docker_answers=answers, podman_found=shutil.which(Provider.podman.value) is not None
    )


def kind_environment(provider: Provider) -> dict[str, str]:
    """What kind's commands need in their environment to run the node with PROVIDER."""
    return {KIND_PROVIDER_ENV: provider.value} if provider is Provider.podman else {}


def kind_steps(
    repository: Path,
    workspace: KindWorkspace,
    provider: Provider,
    *,
    node_image: str | None = None,
    cluster_name: str = KIND_CLUSTER,
) -> list[Step]:
    """Build both images, create the kind cluster and load the images into its node."""
    kind_env = kind_environment(provider)
    create = ["kind", "create", "cluster", "--name", cluster_name]
    create += ["--config", str(workspace.cluster_config)]
    if node_image is not None:
        create += ["--image", node_image]
    steps = [
        Step(
            f"build both images with {provider.value}",
            (str(repository / "hack" / "build-images.sh"),),
            {IMAGE_ENGINE_ENV: provider.value},
        ),
        Step(
            f"create kind cluster {cluster_name} (mounts the sample project's copy)",
            tuple(create),
            kind_env,
        ),
    ]
    for target in (OPERATOR_TARGET, REPLICA_TARGET):
        name = local_image(target, provider)
        if provider is Provider.docker:
            steps.append(
                Step(
                    f"load {name} into the cluster's node",
                    ("kind", "load", "docker-image", name, "--name", cluster_name),
                )
            )
            continue
        archive = str(workspace.archive(target))
        steps += [
            Step(f"save {name}", ("podman", "save", "--output", archive, name)),
            Step(
                f"load {name} into the cluster's node",
                ("kind", "load", "image-archive", archive, "--name", cluster_name),
                kind_env,
            ),
        ]
    return steps


def image_settings(provider: Provider) -> list[str]:
    """The chart's image repositories, as the images were loaded into the node."""
    if provider is Provider.docker:
        return []
    return [
        f"image.repository={PODMAN_LOCAL_REGISTRY}/tars-{OPERATOR_TARGET}",
        f"replicaImage.repository={PODMAN_LOCAL_REGISTRY}/tars-{REPLICA_TARGET}",
    ]


def cluster_config(repository: Path, project: Path) -> dict[str, Any]:
    """examples/kind/cluster.yaml, its sample-project mount pointed at `project`."""
    document: dict[str, Any] = yaml.safe_load(
        (repository / "examples" / "kind" / "cluster.yaml").read_text()
    )
    mounts = [
        mount
        for node in document["nodes"]
        for mount in node.get("extraMounts", [])
        if mount["containerPath"] == NODE_PROJECT_PATH
    ]
    if not mounts:
        fail(f"examples/kind/cluster.yaml mounts nothing at {NODE_PROJECT_PATH}")
    for mount in mounts:
        mount["hostPath"] = str(project)
    return document


def prepare_workspace(repository: Path, workspace: KindWorkspace, console: Console) -> None:
    """A git copy of the sample project, owned by the replicas' user (they commit into it),
    and the cluster config that mounts it. A copy left by an earlier demo is kept: a
    cluster of that demo may still have it mounted."""
    project = workspace.project
    if not (project / ".git").is_dir():
        shutil.rmtree(project, ignore_errors=True)
        shutil.copytree(
            repository / "examples" / "sample-project",
            project,
            ignore=shutil.ignore_patterns(".ruff_cache", "__pycache__", ".tars"),
        )
        git = {**os.environ, **FALLBACK_IDENTITY}
        for argv in (
            ["git", "init", "-q", "-b", "main"],
            ["git", "add", "-A"],
            ["git", "commit", "-q", "-m", "sample project"],
        ):
            subprocess.run(argv, cwd=project, env=git, check=True, capture_output=True)
        console.print(f"the sample project's copy: {project}")
    if project.stat().st_uid != NON_ROOT_ID:
        if os.geteuid() != 0:
            fail(
                f"the replicas (uid {NON_ROOT_ID}) commit into {project}: "
                f"sudo chown -R {NON_ROOT_ID}:{NON_ROOT_ID} {project}, then run the demo again"
            )
        for directory, _, files in os.walk(project):
            for path in [directory, *(os.path.join(directory, name) for name in files)]:
                os.lchown(path, NON_ROOT_ID, NON_ROOT_ID)
    workspace.cluster_config.write_text(
        yaml.safe_dump(cluster_config(repository, project), sort_keys=False)
    )
    # podman save refuses to write over the archives an earlier demo left.
    for target in (OPERATOR_TARGET, REPLICA_TARGET):
        workspace.archive(target).unlink(missing_ok=True)


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


def kind_context(cluster_name: str) -> str:
    """The kube-context kind writes for the cluster."""
    return f"kind-{cluster_name}"


def demo_steps(
    repository: Path,
    *,
    kind: bool,
    provider: Provider = Provider.docker,
    node_image: str | None = None,
    cluster_name: str = KIND_CLUSTER,
    namespace: str = DEMO_NAMESPACE,
    helm: str = "helm",
    kubeconfig: Path | None = None,
    context: str | None = None,
    settings: Sequence[str] = (),
) -> list[Step]:
    """Every external command, in order: images and kind (with --kind), then the chart."""
    steps = []
    if kind:
        steps = kind_steps(
            repository,
            KindWorkspace.of(repository, cluster_name),
            provider,
            node_image=node_image,
            cluster_name=cluster_name,
        )
        settings = [*image_settings(provider), *settings]
        context = context or kind_context(cluster_name)
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


def ensure_host_modules(console: Console) -> None:
    """An empty HOST_MODULES where the kernel has none: the node loads no module, it only
    needs the mount's source to exist."""
    if HOST_MODULES.is_dir():
        return
    if os.geteuid() != 0:
        fail(
            f"kind mounts {HOST_MODULES} into its node and this machine has none: "
            f"sudo mkdir -p {HOST_MODULES}, then run the demo again"
        )
    console.print(
        f"creating an empty {HOST_MODULES}: this kernel has no modules directory, "
        "and kind mounts it into its node"
    )
    HOST_MODULES.mkdir(parents=True)


def _execute(step: Step, repository: Path, console: Console) -> None:
    console.print(f"[bold]{step.description}[/]: {step}")
    if shutil.which(step.argv[0]) is None:
        fail(f"{step.argv[0]} is not installed; it is needed to {step.description}")
    result = subprocess.run(
        step.argv,
        cwd=repository,
        env={**os.environ, **step.env},
        check=False,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )
    if result.returncode != 0:
        fail(f"{step.description} failed (exit {result.returncode}): {step}")


def _prepare_replicas(
    cluster: Cluster, project_path: str, console: Console, timeout_seconds: int
) -> None:
    for line in coordinator_access.ensure(cluster.api, cluster.namespace):
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
    node_image: str | None,
    project_path: str,
    cluster_name: str = KIND_CLUSTER,
    namespace: str,
    helm: str,
    kubeconfig: Path | None,
    context: str | None,
    dry_run: bool,
    settings: Sequence[str] = (),
    timeout_seconds: int = REPLICAS_TIMEOUT_SECONDS,
) -> None:
    console = Console()
    provider = provider_here() if kind else Provider.docker
    steps = demo_steps(
        repository,
        kind=kind,
        provider=provider,
        node_image=node_image,
        cluster_name=cluster_name,
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
    if kind:
        ensure_host_modules(console)
        prepare_workspace(repository, KindWorkspace.of(repository, cluster_name), console)
        context = context or kind_context(cluster_name)
    for step in steps:
        _execute(step, repository, console)
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
    phase = finished.status.phase if finished.status is not None else None
    if phase is not RunPhase.succeeded:
        fail(
            f"selfcodingrun/{created.name} ended {phase}: "
            f"kubectl -n {namespace} describe scr {created.name}"
        )


def repository_root() -> Path:
    """The source tree this CLI runs from: the chart, the Dockerfile and the examples."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "charts" / "tars" / "Chart.yaml").is_file():
        fail(f"the cluster demo needs the TARS source tree (charts/tars is not under {root})")
    return root
