"""The cluster demo: the kind commands as data, for podman and for docker; `--cluster`
for real against a cluster with a real node: the chart's operator pod, the four replicas
(containers from the images of `make images`), a volume run on a copy of the sample
project, its diff, then the operator's RBAC asked from inside its pod and the tester's
confinement seen from inside its own; and `--kind` for real (`-m kind`, `make test-kind`): a kind cluster of
its own from the node image of `make kind`, deleted afterwards."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from tars_api.names import LABEL_INSTANCE, LABEL_NAME, NON_ROOT_ID
from tars_api.run import RunPhase, SelfCodingRun
from tars_api.vocabulary import Role
from tars_engine.core.settings import ENGINE_VERSION
from tarscli.errors import CliError
from tarscli.kind_demo import (
    DEMO_NAMESPACE,
    KIND_CLUSTER,
    NODE_PROJECT_PATH,
    RELEASE,
    KindWorkspace,
    Provider,
    cluster_config,
    demo_steps,
    kind_context,
    kind_environment,
    pick_provider,
    provider_here,
)
from tarscli.kubeconfig import IN_CLUSTER_ACCOUNT

from tests.harness.e2e import SAMPLE_PROJECT, project_tests
from tests.harness.images import Engine
from tests.harness.kubectl import REPOSITORY, Kubectl
from tests.harness.node import ContainerNode
from tests.harness.rbac_matrix import (
    OPERATOR_CAN,
    OPERATOR_CANNOT,
    OPERATOR_CONFINED,
    mismatches,
)
from tests.harness.tools import git, git_init, run_tool

TARSCLI = Path(sys.executable).parent / "tarscli"
BUILD_IMAGES = REPOSITORY / "hack" / "build-images.sh"
VALUES = yaml.safe_load((REPOSITORY / "charts" / "tars" / "values.yaml").read_text())
# Not the demo's own cluster, which a user may have up.
KIND_TEST_CLUSTER = "tars-kind-test"
# Creating the cluster, loading both images and the run, each bounded by the demo itself.
KIND_DEMO_SECONDS = 2400
# What each replica pod's container says of itself: its uid, and whether / takes a file.
POD_SELF_REPORT = """
import os
try:
    open("/tars-probe", "w")
    root = "writable"
except OSError as error:
    root = os.strerror(error.errno)
print(os.getuid(), root)
"""
TOKEN = IN_CLUSTER_ACCOUNT / "token"
# SelfSubjectAccessReviews, posted with the pod's own token and CA (the directory in argv):
# the resourceAttributes of each on stdin, whether each is allowed on stdout, as JSON.
SELF_ACCESS_REVIEWS = """
import json, os, ssl, sys, urllib.request
account = sys.argv[1]
token = open(os.path.join(account, "token")).read().strip()
context = ssl.create_default_context(cafile=os.path.join(account, "ca.crt"))
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
url = f"https://{host}:{port}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
answers = []
for attributes in json.load(sys.stdin):
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": attributes}}
    request = urllib.request.Request(url, data=json.dumps(review).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, context=context) as response:
        answers.append(json.load(response)["status"]["allowed"])
print(json.dumps(answers))
"""


def test_kind_with_podman_builds_creates_saves_loads_then_installs() -> None:
    steps = demo_steps(REPOSITORY, kind=True, provider=Provider.podman, node_image="node:1")
    assert [step.argv[:3] for step in steps] == [
        (str(BUILD_IMAGES),),
        ("kind", "create", "cluster"),
        ("podman", "save", "--output"),
        ("kind", "load", "image-archive"),
        ("podman", "save", "--output"),
        ("kind", "load", "image-archive"),
        ("helm", "upgrade", "--install"),
    ]
    assert BUILD_IMAGES.is_file() and os.access(BUILD_IMAGES, os.X_OK)
    assert steps[0].env == {"TARS_IMAGE_ENGINE": "podman"}
    assert all(steps[i].env == {"KIND_EXPERIMENTAL_PROVIDER": "podman"} for i in (1, 3, 5))
    create = steps[1].argv
    assert create[-2:] == ("--image", "node:1")
    assert Path(create[create.index("--config") + 1]) == KindWorkspace.of(REPOSITORY).cluster_config
    saved = [(step.argv[3], step.argv[4]) for step in (steps[2], steps[4])]
    assert [name for _, name in saved] == [
        f"localhost/tars-operator:{ENGINE_VERSION}",
        f"localhost/tars-replica:{ENGINE_VERSION}",
    ]
    assert [step.argv[3] for step in (steps[3], steps[5])] == [archive for archive, _ in saved]
    install = steps[-1].argv
    assert install[-2:] == ("--kube-context", f"kind-{KIND_CLUSTER}")
    settings = [install[i + 1] for i, argument in enumerate(install) if argument == "--set"]
    assert f"image.repository=localhost/{VALUES['image']['repository']}" in settings
    assert f"replicaImage.repository=localhost/{VALUES['replicaImage']['repository']}" in settings


def test_kind_with_docker_loads_the_images_by_name() -> None:
    steps = demo_steps(REPOSITORY, kind=True, provider=Provider.docker)
    assert [step.argv[:3] for step in steps[1:]] == [
        ("kind", "create", "cluster"),
        ("kind", "load", "docker-image"),
        ("kind", "load", "docker-image"),
        ("helm", "upgrade", "--install"),
    ]
    assert steps[0].env == {"TARS_IMAGE_ENGINE": "docker"}
    assert "--image" not in steps[1].argv and not steps[1].env
    assert [step.argv[3] for step in steps[2:4]] == [
        f"{VALUES['image']['repository']}:{ENGINE_VERSION}",
        f"{VALUES['replicaImage']['repository']}:{ENGINE_VERSION}",
    ]
    assert "image.repository" not in " ".join(steps[-1].argv)


def test_kind_runs_on_docker_where_its_daemon_answers_else_podman() -> None:
    assert pick_provider(docker_answers=True, podman_found=True) is Provider.docker
    assert pick_provider(docker_answers=False, podman_found=True) is Provider.podman
    with pytest.raises(CliError, match="needs docker .* or podman"):
        pick_provider(docker_answers=False, podman_found=False)


def test_the_kind_config_mounts_the_project_copy_where_the_run_reads_it(tmp_path: Path) -> None:
    config = cluster_config(REPOSITORY, tmp_path / "copy")
    mounts = [mount for node in config["nodes"] for mount in node.get("extraMounts", [])]
    assert {"hostPath": str(tmp_path / "copy"), "containerPath": NODE_PROJECT_PATH}.items() <= (
        mounts[0].items()
    )
    run = yaml.safe_load((REPOSITORY / "examples" / "runs" / "volume-run.yaml").read_text())
    assert run["spec"]["source"]["volume"]["hostPath"] == NODE_PROJECT_PATH


def test_cluster_mode_installs_the_chart_only() -> None:
    steps = demo_steps(REPOSITORY, kind=False, kubeconfig=Path("/k"), settings=["a=b"])
    assert [step.argv[:2] for step in steps] == [("helm", "upgrade")]
    assert ("--set", "a=b") == steps[0].argv[-4:-2]


def image_repository(reference: str) -> str:
    """`localhost/tars-replica` of `localhost/tars-replica:0.1.0`: the demo sets the tag."""
    return reference.rpartition(":")[0]


def chown_tree(root: Path, uid: int, gid: int) -> None:
    for directory, _, files in os.walk(root):
        for path in [directory, *(os.path.join(directory, name) for name in files)]:
            os.lchown(path, uid, gid)


@dataclass(frozen=True)
class ClusterDemo:
    """`tarscli demo self-code-demo --cluster` as it ended; its pods still run."""

    result: subprocess.CompletedProcess[str]
    project: Path
    namespace: str


@pytest.fixture(scope="module")
def cluster_demo(
    container_node: ContainerNode,
    node_kubectl: Kubectl,
    node_crds: list[str],
    operator_image: str,
    replica_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ClusterDemo]:
    """The chart's operator and the replicas as containers on the node; the coordinator
    commits in the project's directory on the node, as the replicas' user."""
    helm_home = tmp_path_factory.mktemp("helm")
    # Not under pytest's own directory, which only root may enter.
    node_directory = Path(tempfile.mkdtemp(prefix="tars-demo-project-"))
    node_directory.chmod(0o755)
    project = node_directory / "sample-project"
    shutil.copytree(
        SAMPLE_PROJECT, project, ignore=shutil.ignore_patterns(".ruff_cache", "__pycache__")
    )
    git_init(project, "sample project")
    # The replicas' user and group: the coordinator commits in the project as them.
    chown_tree(project, NON_ROOT_ID, NON_ROOT_ID)
    namespace = f"demo-{os.getpid()}"
    try:
        result = subprocess.run(
            [
                str(TARSCLI),
                "demo",
                "self-code-demo",
                "--cluster",
                "--helm",
                str(container_node.plane.tools_dir / "helm"),
                # The images are on the node already; no registry is reachable to pull from.
                "--helm-set",
                f"image.repository={image_repository(operator_image)}",
                "--helm-set",
                "image.pullPolicy=Never",
                "--helm-set",
                f"replicaImage.repository={image_repository(replica_image)}",
                "--helm-set",
                "replicaImage.pullPolicy=Never",
                "--timeout",
                "180",
                "--project-path",
                str(project),
                "--kubeconfig",
                str(container_node.plane.kubeconfig),
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
                "HELM_CACHE_HOME": str(helm_home),
                "HELM_CONFIG_HOME": str(helm_home),
                "HELM_DATA_HOME": str(helm_home),
            },
        )
        # git refuses a repository its user does not own: the project is root's again.
        chown_tree(project, os.geteuid(), os.getegid())
        yield ClusterDemo(result, project, namespace)
    finally:
        pods = node_kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False)
        print(pods.stdout)
        for role in ("analyzer", "coordinator"):
            logs = node_kubectl(
                "logs",
                "-n",
                namespace,
                "-l",
                f"{LABEL_INSTANCE}={role}",
                "--previous",
                check=False,
            )
            print(role, logs.stdout[-3000:], logs.stderr[-500:])
        node_kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        shutil.rmtree(node_directory)


def test_cluster_demo_on_the_local_control_plane(cluster_demo: ClusterDemo) -> None:
    result, project = cluster_demo.result, cluster_demo.project
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Succeeded" in result.stdout, result.stdout
    assert "--- a/ledgerly/" in result.stdout
    commits = git(project, "log", "--format=%s").splitlines()
    assert len(commits) > 1, "auto-apply commits improvements in place"
    tests = project_tests(project)
    assert tests.returncode == 0, tests.stdout


def running_pod(kubectl: Kubectl, namespace: str, selector: str) -> str:
    pods = json.loads(
        kubectl(
            "get", "pods", "-n", namespace, "-l", selector,
            "--field-selector=status.phase=Running", "-o", "json",
        ).stdout
    )["items"]  # fmt: skip
    assert len(pods) == 1, [pod["metadata"]["name"] for pod in pods]
    return str(pods[0]["metadata"]["name"])


def test_the_chart_pods_hold_their_rights_from_inside(
    cluster_demo: ClusterDemo, node_kubectl: Kubectl
) -> None:
    """The operator's pod asks the API server, with its own mounted token, what it may do:
    the matrix tests/packaging/test_rbac.py asks from outside. The tester's pod has no token,
    a read-only root and the non-root user."""
    namespace = cluster_demo.namespace
    assert cluster_demo.result.returncode == 0, cluster_demo.result.stderr[-3000:]
    operator = running_pod(node_kubectl, namespace, f"{LABEL_NAME}={RELEASE}-operator")
    checks = [*OPERATOR_CAN, *OPERATOR_CANNOT, *OPERATOR_CONFINED]
    # The release's RBAC is namespaced: `default` stands for any namespace but its own.
    reviews = [check.resource_attributes(namespace, "default") for check in checks]
    answered = node_kubectl(
        "exec", "-i", operator, "-n", namespace, "--",
        "python", "-c", SELF_ACCESS_REVIEWS, str(IN_CLUSTER_ACCOUNT),
        input=json.dumps(reviews),
    )  # fmt: skip
    allowed = dict(zip(checks, json.loads(answered.stdout), strict=True))
    wrong = mismatches(allowed.__getitem__, OPERATOR_CAN, OPERATOR_CANNOT + OPERATOR_CONFINED)
    assert not wrong, "the operator's pod:\n  " + "\n  ".join(wrong)

    tester = running_pod(node_kubectl, namespace, f"{LABEL_INSTANCE}={Role.tester.value}")

    def in_tester(*command: str) -> subprocess.CompletedProcess[str]:
        return node_kubectl("exec", tester, "-n", namespace, "--", *command, check=False)

    token = in_tester("python", "-c", f"import os; print(os.path.exists({str(TOKEN)!r}))")
    assert token.stdout.strip() == "False", token.stdout + token.stderr
    report = in_tester("python", "-c", POD_SELF_REPORT)
    assert report.stdout.strip().split(" ", 1) == [
        str(NON_ROOT_ID),
        os.strerror(errno.EROFS),
    ], report.stdout + report.stderr


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


@pytest.mark.kind
@pytest.mark.timeout(KIND_DEMO_SECONDS + 300)
def test_kind_demo_in_a_kind_cluster_of_its_own(
    kind_dir: Path, tools_dir: Path, image_engine: Engine, node_held: None, tmp_path: Path
) -> None:
    """`tarscli demo self-code-demo --kind` as `make kind-demo` runs it; the run and the
    replica pods seen through the kind cluster's kubeconfig; the cluster deleted after."""
    kubeconfig = tmp_path / "kubeconfig"
    environment = {
        **os.environ,
        **kind_environment(provider_here()),
        "PATH": f"{kind_dir / 'bin'}:{tools_dir}:{os.environ.get('PATH', '')}",
        "CONTAINERS_CONF": str(image_engine.build.containers_conf),
        # kind writes the cluster's context here, not into the user's kubeconfig.
        "KUBECONFIG": str(kubeconfig),
        "COLUMNS": "200",
        **{f"HELM_{part}_HOME": str(tmp_path / "helm") for part in ("CACHE", "CONFIG", "DATA")},
    }
    delete = [str(kind_dir / "bin" / "kind"), "delete", "cluster", "--name", KIND_TEST_CLUSTER]
    workspace = KindWorkspace.of(REPOSITORY, KIND_TEST_CLUSTER)
    # What a test killed before its clean-up left.
    run_tool(delete, env=environment, timeout=300)
    shutil.rmtree(workspace.root, ignore_errors=True)

    def kubectl(*arguments: str) -> str:
        return run_tool(
            [str(tools_dir / "kubectl"), f"--kubeconfig={kubeconfig}",
             f"--context={kind_context(KIND_TEST_CLUSTER)}", "-n", DEMO_NAMESPACE, *arguments],
            timeout=120,
        ).stdout  # fmt: skip

    try:
        result = subprocess.run(
            [
                str(TARSCLI), "demo", "self-code-demo", "--kind",
                "--kind-cluster", KIND_TEST_CLUSTER,
                "--kind-node-image", (kind_dir / "node-image").read_text().strip(),
            ],
            capture_output=True, text=True, env=environment, timeout=KIND_DEMO_SECONDS,
            check=False,
        )  # fmt: skip
        print(result.stdout[-6000:], result.stderr[-3000:])
        assert result.returncode == 0, result.stderr[-3000:]
        assert "--- a/ledgerly/" in result.stdout

        runs = json.loads(kubectl("get", "selfcodingruns", "-o", "json"))["items"]
        assert len(runs) == 1
        run = SelfCodingRun.model_validate(runs[0])
        assert run.status is not None and run.status.phase is RunPhase.succeeded
        assert run.status.statistics.improvements_applied > 0
        project = workspace.project
        commits = run_tool(
            ["git", "-c", f"safe.directory={project}", "-C", str(project), "log", "--format=%s"]
        ).stdout.splitlines()
        assert len(commits) == 1 + run.status.statistics.improvements_applied

        pods = json.loads(kubectl("get", "pods", "-o", "json"))["items"]
        running = [pod["metadata"]["name"] for pod in pods if pod["status"]["phase"] == "Running"]
        # The operator and the four role replicas.
        assert len(running) >= 5, [pod["metadata"]["name"] for pod in pods]
        for pod in running:
            report = kubectl("exec", pod, "--", "python", "-c", POD_SELF_REPORT)
            assert report.strip().split(" ", 1) == [str(NON_ROOT_ID), "Read-only file system"], pod
    finally:
        if kubeconfig.exists():
            print(run_tool(
                [str(tools_dir / "kubectl"), f"--kubeconfig={kubeconfig}", "get", "pods", "-A",
                 "-o", "wide"], check=False, timeout=120,
            ).stdout)  # fmt: skip
        run_tool(delete, env=environment, timeout=300)
        shutil.rmtree(workspace.root, ignore_errors=True)
