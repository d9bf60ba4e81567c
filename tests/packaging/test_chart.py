"""charts/tars: lint, CRDs from the one source, the values schema, and the rendered objects.

Rendered objects are checked against what the operator's own code expects (its argument
parser, its config loader, the pods it builds) and accepted by the real API server as a
server-side dry run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tarfile
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import tars_operator
import yaml
from tars_api.replica import TarsReplica
from tars_api.vocabulary import Role
from tars_operator import replicas
from tars_operator.config import NON_ROOT_ID, OperatorConfig, load_config
from tars_operator.config import TesterIsolation as Isolation
from tars_operator.main import build_parser

from tests.harness import controlplane, ollama
from tests.harness.chart import (
    CHART,
    REPOSITORY,
    Helm,
    Manifest,
    Render,
    Template,
    documents,
    find,
    one,
)
from tests.harness.kubectl import Kubectl
from tests.harness.node import ContainerNode

CRD_FILES = sorted((REPOSITORY / "crds").glob("*.yaml"))
VALUES = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))["appVersion"]
PROFILES: dict[str, tuple[str, ...]] = {
    "default": (),
    "cluster-wide": ("rbac.clusterWide=true",),
    "replicas-and-ollama": ("replicas.enabled=true", "ollama.enabled=true"),
    "package-index": (
        "sandbox.packageIndex.cidrs={151.101.0.0/16,2a04:4e42::/32}",
        "sandbox.packageIndex.caConfigMap=corporate-ca",
    ),
}


def operator_config(manifests: list[Manifest], tmp_path: Path) -> OperatorConfig:
    """The operator's config as the operator itself loads it from the chart's ConfigMap."""
    config_map = one(manifests, "ConfigMap", "tars-operator")
    path = tmp_path / "operator.yaml"
    path.write_text(config_map["data"]["operator.yaml"], encoding="utf-8")
    return load_config(path, environ={})


def operator_container(manifests: list[Manifest]) -> Manifest:
    deployment = one(manifests, "Deployment", "tars-operator")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


# --- lint and packaging -------------------------------------------------------------------


def test_app_version_is_the_distributions_version() -> None:
    """Image tags default to appVersion: the version the images' wheel is built with."""
    pyproject = tomllib.loads((REPOSITORY / "pyproject.toml").read_text(encoding="utf-8"))
    assert APP_VERSION == pyproject["project"]["version"] == tars_operator.__version__
    assert OperatorConfig().image == f"{VALUES['replicaImage']['repository']}:{APP_VERSION}"


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_helm_lint_strict_is_clean(helm: Helm, profile: str) -> None:
    settings = [argument for setting in PROFILES[profile] for argument in ("--set", setting)]
    result = helm("lint", "--strict", str(CHART), *settings)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_chart_crds_are_the_repository_crds(helm: Helm) -> None:
    """One source: the chart's crds/ is the repository's crds/, byte for byte."""
    assert (CHART / "crds").resolve() == (REPOSITORY / "crds").resolve()
    shown = documents(helm("show", "crds", str(CHART)).stdout)
    expected = [document for path in CRD_FILES for document in documents(path.read_text())]
    assert sorted(shown, key=lambda crd: crd["metadata"]["name"]) == sorted(
        expected, key=lambda crd: crd["metadata"]["name"]
    )
    assert len(shown) == 2
    rendered = documents(
        helm("template", "tars", str(CHART), "--include-crds", "--namespace", "tars").stdout
    )
    crds = find(rendered, "CustomResourceDefinition")
    assert sorted(crd["metadata"]["name"] for crd in crds) == [
        "selfcodingruns.tars.dev",
        "tarsreplicas.tars.dev",
    ]


def test_packaged_chart_holds_exactly_the_two_crds(helm: Helm, tmp_path: Path) -> None:
    helm("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("tars-*.tgz")
    with tarfile.open(archive) as bundle:
        names = bundle.getnames()
        crd_members = sorted(name for name in names if name.startswith("tars/crds/"))
        assert crd_members == [f"tars/crds/{path.name}" for path in CRD_FILES]
        for path in CRD_FILES:
            member = bundle.extractfile(f"tars/crds/{path.name}")
            assert member is not None and member.read() == path.read_bytes()
    assert not [name for name in names if "tars_api" in name or "__pycache__" in name], names
    assert "tars/values.schema.json" in names and "tars/README.md" in names


# --- values.schema.json -------------------------------------------------------------------

BAD_VALUES = {
    "unknown engine": (("engine=gpt",), "engine"),
    "negative replica count": (("replicas.tester=-1",), "tester"),
    "unknown pull policy": (("image.pullPolicy=Sometimes",), "pullPolicy"),
    "misspelt key": (("replica.enabled=true",), "replica"),
    "string for a boolean": (("--set-string", "rbac.clusterWide=yes"), "clusterWide"),
    "invalid namespace": (("operator.watchNamespaces={Bad_Namespace}",), "watchNamespaces"),
    "port out of range": (("operator.metricsPort=70000",), "metricsPort"),
    "ollama host without a scheme": (("ollama.host=ollama:11434",), "host"),
    "workers below one": (("operator.workers=0",), "workers"),
    "unknown role": (("roles.reviewer.image=x",), "reviewer"),
    "bad quantity": (("scratchSizeLimit=lots",), "scratchSizeLimit"),
    "package index address without a prefix": (
        ("sandbox.packageIndex.cidrs={151.101.0.1}",),
        "cidrs",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_rejects_bad_values(helm: Helm, case: str) -> None:
    settings, field = BAD_VALUES[case]
    arguments = list(settings) if settings[0].startswith("--") else ["--set", settings[0]]
    result = helm("template", "tars", str(CHART), *arguments, check=False)
    assert result.returncode != 0, f"{case}: accepted\n{result.stdout[:500]}"
    assert "schema" in result.stderr and field in result.stderr, result.stderr


def test_schema_accepts_the_documented_settings(render: Render) -> None:
    manifests = render(
        "rbac.clusterWide=true",
        "operator.watchNamespaces={team-a,team-b}",
        "rbac.gitCredentialSecrets={git-credentials}",
        "replicas.enabled=true",
        "replicas.generator=3",
        "replicas.image=registry.example/tars-replica:dev",
        "ollama.host=http://ollama.ai.svc:11434",
        "engine=ollama",
        "model=qwen2.5-coder:7b",
        "roles.tester.image=registry.example/tester:1",
    )
    assert one(manifests, "TarsReplica", "generator")["spec"]["replicas"] == 3


# --- the rendered objects, as the operator's code sees them -------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_operator_deployment(render: Render, profile: str) -> None:
    manifests = render(*PROFILES[profile], namespace="tars-system")
    deployment = one(manifests, "Deployment", "tars-operator")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one(manifests, "ServiceAccount", "tars")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == NON_ROOT_ID
    container = operator_container(manifests)
    assert container["command"] == ["tars-operator"]
    assert container["image"] == f"tars-operator:{APP_VERSION}"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"] and container["resources"]["limits"]

    arguments = build_parser().parse_args(container["args"])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert arguments.liveness_port == ports["health"] == VALUES["operator"]["livenessPort"]
    assert arguments.metrics_port == ports["metrics"] == VALUES["operator"]["metricsPort"]
    probe = container["livenessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "health"}
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert arguments.config is not None and str(arguments.config.parent) in mounts

    role_namespaces = sorted(
        role["metadata"]["namespace"] for role in find(manifests, "Role", "tars-operator")
    )
    if "rbac.clusterWide=true" in PROFILES[profile]:
        assert arguments.all_namespaces and not arguments.namespaces
        assert role_namespaces == []
        binding = one(manifests, "ClusterRoleBinding", "tars-operator")
        assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    else:
        # The operator watches exactly the namespaces its Roles grant.
        assert not arguments.all_namespaces
        assert sorted(arguments.namespaces) == role_namespaces == ["tars-system"]
        assert not find(manifests, "ClusterRoleBinding", "tars-operator")


def test_watch_namespaces_get_roles_accounts_and_policies(render: Render) -> None:
    manifests = render("operator.watchNamespaces={team-a,tars}", namespace="tars")
    arguments = build_parser().parse_args(operator_container(manifests)["args"])
    assert arguments.namespaces == ["tars", "team-a"]
    for kind, name in (
        ("Role", "tars-operator"),
        ("RoleBinding", "tars-operator"),
        ("Role", "tars-coordinator"),
        ("ServiceAccount", "tars-coordinator"),
        ("NetworkPolicy", "tars-tester-deny-egress"),
    ):
        namespaces = sorted(item["metadata"]["namespace"] for item in find(manifests, kind, name))
        assert namespaces == ["tars", "team-a"], f"{kind} {name}: {namespaces}"


def test_operator_config_is_valid_for_the_operator(render: Render, tmp_path: Path) -> None:
    config = operator_config(render(namespace="tars"), tmp_path)
    assert config.image == f"{VALUES['replicaImage']['repository']}:{APP_VERSION}"
    assert config.engine.value == VALUES["engine"] and config.model == VALUES["model"]
    assert config.port == VALUES["replicaPort"]
    assert config.ollama_host is None
    assert config.coordinator_service_account == VALUES["coordinator"]["serviceAccountName"]
    assert config.run_as_user == NON_ROOT_ID
    for role in Role:
        expected = VALUES["roles"][role.value]["resources"]
        resources = config.resources_for(role)
        assert {key: str(value) for key, value in resources.requests.items()} == expected[
            "requests"
        ]
        assert {key: str(value) for key, value in resources.limits.items()} == expected["limits"]


def test_config_change_restarts_the_operator(render: Render) -> None:
    def checksum(*settings: str) -> str:
        deployment = one(render(*settings), "Deployment", "tars-operator")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum() == checksum()
    assert checksum() != checksum("model=codellama")


def chart_replicas(manifests: list[Manifest], namespace: str) -> dict[Role, TarsReplica]:
    parsed: dict[Role, TarsReplica] = {}
    for index, manifest in enumerate(find(manifests, "TarsReplica")):
        stored = {**manifest, "metadata": {**manifest["metadata"], "uid": f"uid-{index}"}}
        replica = TarsReplica.model_validate(stored)
        assert replica.metadata.namespace == namespace
        parsed[replica.spec.role] = replica
    return parsed


def test_default_replicas_are_the_four_roles(render: Render) -> None:
    assert not find(render(), "TarsReplica")
    parsed = chart_replicas(render("replicas.enabled=true", namespace="work"), "work")
    assert set(parsed) == set(Role)
    for role, replica in parsed.items():
        # Named like `tarscli self-code setup` names them, which then leaves them be.
        assert replica.name == role.value
        assert replica.spec.replicas == VALUES["replicas"][role.value]
        assert replica.spec.image is None


def test_tester_network_policy_selects_exactly_the_tester_pods(
    render: Render, tmp_path: Path
) -> None:
    """The policy's selector, matched against the pods the operator builds from the chart's replicas."""
    manifests = render("replicas.enabled=true", namespace="work")
    policy = one(manifests, "NetworkPolicy", "tars-tester-deny-egress")
    assert policy["spec"]["policyTypes"] == ["Egress"]
    assert "egress" not in policy["spec"], "any egress rule would open a way out"
    selector = policy["spec"]["podSelector"]["matchLabels"]
    config = operator_config(manifests, tmp_path)
    for role, replica in chart_replicas(manifests, "work").items():
        deployment = replicas.desired_deployment(replica, config)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selected = all(labels.get(key) == value for key, value in selector.items())
        assert selected == (role is Role.tester), f"{role.value}: selected={selected}"
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] == (role is Role.coordinator)
        if role is Role.coordinator:
            accounts = find(manifests, "ServiceAccount", pod["serviceAccountName"])
            assert [account["metadata"]["namespace"] for account in accounts] == ["work"]
        assert pod["securityContext"]["runAsUser"] == NON_ROOT_ID
    assert not find(render("sandbox.denyTesterEgress=false"), "NetworkPolicy")


def test_the_tester_isolation_reaches_the_operator(render: Render, tmp_path: Path) -> None:
    assert operator_config(render(), tmp_path).tester_isolation is Isolation.user_namespace
    alone = operator_config(render("sandbox.testerIsolation=pod"), tmp_path)
    assert alone.tester_isolation is Isolation.pod


def test_testers_reach_only_dns_and_the_package_index_addresses(
    render: Render, tmp_path: Path
) -> None:
    assert not find(render(), "NetworkPolicy", "tars-tester-package-index")
    manifests = render(*PROFILES["package-index"], namespace="work")
    deny = one(manifests, "NetworkPolicy", "tars-tester-deny-egress")
    allow = one(manifests, "NetworkPolicy", "tars-tester-package-index")
    assert allow["spec"]["podSelector"] == deny["spec"]["podSelector"]
    assert allow["spec"]["policyTypes"] == ["Egress"]
    dns, index = allow["spec"]["egress"]
    assert dns == {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    assert index == {
        "to": [{"ipBlock": {"cidr": "151.101.0.0/16"}}, {"ipBlock": {"cidr": "2a04:4e42::/32"}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    }
    trusted = operator_config(manifests, tmp_path).package_index_ca
    assert trusted is not None and (trusted.config_map, trusted.key) == ("corporate-ca", "ca.crt")
    assert operator_config(render(), tmp_path).package_index_ca is None


def test_ollama_serves_the_replicas_and_pulls_the_model(render: Render, tmp_path: Path) -> None:
    assert not find(render(), "PersistentVolumeClaim")
    manifests = render("ollama.enabled=true", namespace="ai")
    service = one(manifests, "Service", "tars-ollama")
    port = service["spec"]["ports"][0]["port"]
    config = operator_config(manifests, tmp_path)
    assert config.ollama_host == f"http://tars-ollama.ai.svc:{port}"

    deployment = one(manifests, "Deployment", "tars-ollama")
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    claim = one(manifests, "PersistentVolumeClaim")
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert (
        claim["spec"]["resources"]["requests"]["storage"] == VALUES["ollama"]["persistence"]["size"]
    )

    job = one(manifests, "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["ollama", "pull", VALUES["model"]]
    environment = {item["name"]: item["value"] for item in container["env"]}
    assert environment["OLLAMA_HOST"] == f"http://tars-ollama:{port}"

    renamed = one(render("ollama.enabled=true", "ollama.model=codellama:7b"), "Job")
    assert renamed["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "codellama:7b"
    assert renamed["metadata"]["name"] != job["metadata"]["name"], "a new model needs a new Job"

    external = operator_config(render("ollama.host=http://gpu-box:11434"), tmp_path)
    assert external.ollama_host == "http://gpu-box:11434"


MODEL_VOLUME = "ollama.modelVolume.persistentVolumeClaim.claimName=models"


def test_ollama_serves_models_from_a_volume_without_pulling(render: Render, helm: Helm) -> None:
    manifests = render("ollama.enabled=true", "ollama.modelSource=volume", MODEL_VOLUME)
    assert not find(manifests, "Job") and not find(manifests, "PersistentVolumeClaim")
    pod = one(manifests, "Deployment", "tars-ollama")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["models"] == {"name": "models", "persistentVolumeClaim": {"claimName": "models"}}
    (container,) = pod["containers"]
    (mount,) = [item for item in container["volumeMounts"] if item["name"] == "models"]
    assert mount["readOnly"] is True
    environment = {item["name"]: item["value"] for item in container["env"]}
    assert environment["OLLAMA_MODELS"] == mount["mountPath"]

    refused = helm(
        "template", "tars", str(CHART), "--set", "ollama.enabled=true",
        "--set", "ollama.modelSource=volume", check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "ollama.modelVolume is empty" in refused.stderr, refused.stderr


def test_chart_runs_the_ollama_the_project_builds_and_tests() -> None:
    pinned = (REPOSITORY / "hack" / "tools" / "ollama" / "go.mod").read_text(encoding="utf-8")
    assert f"github.com/ollama/ollama v{VALUES['ollama']['image']['tag']} " in pinned


def test_ollama_serves_a_read_only_model_volume_as_the_chart_runs_it(
    render: Render, ollama_dir: Path
) -> None:
    """The chart's own command, environment and user, on the real server: the models are
    a copy of the test build's that the server's user cannot write to."""
    manifests = render("ollama.enabled=true", "ollama.modelSource=volume", MODEL_VOLUME)
    pod = one(manifests, "Deployment", "tars-ollama")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    user = pod["securityContext"]["runAsUser"]
    # Not under pytest's tmp_path: that is private to this user, and the server runs as `user`.
    root = Path(tempfile.mkdtemp(prefix="tars-ollama-volume-"))
    try:
        root.chmod(0o755)
        (root / "bin").mkdir()
        binary = shutil.copy2(ollama_dir / "bin" / "ollama", root / "bin" / "ollama")
        # Hard links: no copy of the model's bytes; the directories are the server's to not write.
        models = root / "models"
        shutil.copytree(ollama_dir / "models", models, copy_function=os.link)
        for directory in [models, *(path for path in models.rglob("*") if path.is_dir())]:
            directory.chmod(0o555)
        home = root / "home"
        home.mkdir()
        environment = {item["name"]: item["value"] for item in container["env"]}
        environment.update(PATH="/usr/bin:/bin", OLLAMA_MODELS=str(models), HOME=str(home))
        command = [str(binary), *container["command"][1:]]
        if os.geteuid() == 0:
            os.chown(home, user, user)
            command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
        before = sorted(
            (path.relative_to(models), path.stat().st_mtime) for path in models.rglob("*")
        )
        address = f"127.0.0.1:{controlplane.free_port()}"
        server = ollama.serve(command, environment, address, root / "serve.log")
        try:
            tags = httpx.get(f"{server.url}/api/tags", timeout=10).json()
            assert f"{ollama.TEST_MODEL}:latest" in [model["name"] for model in tags["models"]]
            answer = httpx.post(
                f"{server.url}/api/generate",
                json={"model": ollama.TEST_MODEL, "prompt": "def add(a, b):", "stream": False,
                      "options": {"num_predict": 8}},
                timeout=120,
            )  # fmt: skip
            assert answer.is_success, (answer.text, (root / "serve.log").read_text())
            assert answer.json()["eval_count"] > 0
        finally:
            server.stop()
        after = sorted(
            (path.relative_to(models), path.stat().st_mtime) for path in models.rglob("*")
        )
        assert after == before
    finally:
        for directory in root.rglob("*"):
            if directory.is_dir():
                directory.chmod(0o755)
        shutil.rmtree(root)


# --- the real API server ------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_rendered_chart_passes_a_server_side_dry_run(
    template: Template,
    namespace: str,
    tars_crds: list[str],
    kubectl: Callable[..., Any],
    profile: str,
) -> None:
    text = template(*PROFILES[profile], namespace=namespace)
    result = kubectl("apply", "--dry-run=server", "-f", "-", input=text)
    created = [line for line in result.stdout.splitlines() if "(server dry run)" in line]
    assert len(created) == len(documents(text)), result.stdout


def test_multi_namespace_chart_passes_a_server_side_dry_run(
    template: Template,
    namespace: str,
    other_namespace: str,
    tars_crds: list[str],
    kubectl: Callable[..., Any],
) -> None:
    text = template(
        f"operator.watchNamespaces={{{other_namespace}}}",
        "rbac.gitCredentialSecrets={git-credentials}",
        "replicas.enabled=true",
        namespace=namespace,
    )
    # Cluster-scoped objects may already be managed by an earlier helm install in this
    # session; a dry run asks only whether the server accepts them.
    result = kubectl(
        "apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-", input=text
    )
    assert result.stdout.count("(server dry run)") == len(documents(text)), result.stdout


def test_helm_install_upgrade_and_uninstall(
    helm: Helm, namespace: str, tars_crds: list[str], kubectl: Callable[..., Any]
) -> None:
    """The README's install, for real: objects created, an upgrade that changes the model, uninstall."""
    release = f"it-{namespace[-6:]}"
    common = (
        "--namespace",
        namespace,
        "--set",
        "replicas.enabled=true",
        "--set",
        "ollama.enabled=true",
    )
    notes = helm("install", release, str(CHART), *common).stdout
    assert f"deployment/{release}-tars-operator" in notes
    assert f"tarscli self-code status -n {namespace} --watch" in notes
    assert f"http://{release}-tars-ollama.{namespace}.svc:11434" in notes
    names = kubectl("get", "tarsreplicas", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(names) == sorted(f"tarsreplica.tars.dev/{role.value}" for role in Role)
    kubectl("get", f"deployment/{release}-tars-operator", "-n", namespace)
    first_job = kubectl("get", "jobs", "-n", namespace, "-o", "name").stdout.split()
    assert len(first_job) == 1

    helm("upgrade", release, str(CHART), *common, "--set", "ollama.model=codellama:7b")
    jobs = kubectl("get", "jobs", "-n", namespace, "-o", "name").stdout.split()
    assert len(jobs) == 1 and jobs != first_job, "the upgrade replaces the pull Job"
    config = kubectl(
        "get", f"configmap/{release}-tars-operator", "-n", namespace,
        "-o", "jsonpath={.data.operator\\.yaml}",
    ).stdout  # fmt: skip
    assert "ollama_host" in config

    helm("uninstall", release, "--namespace", namespace)
    assert not kubectl("get", "tarsreplicas", "-n", namespace, "-o", "name").stdout.split()
    remaining = kubectl("get", "clusterroles", "-o", "name").stdout
    assert f"{release}-tars-operator-discovery" not in remaining
    # Pulled models outlive the release (helm.sh/resource-policy: keep).
    claims = kubectl("get", "pvc", "-n", namespace, "-o", "name").stdout.split()
    assert claims == [f"persistentvolumeclaim/{release}-tars-ollama-models"]


def container_process(container_node: ContainerNode, pod: Manifest) -> Path:
    """/proc/<pid> of the main process of POD's one container, on the host."""
    (status,) = pod["status"]["containerStatuses"]
    container = status["containerID"].partition("://")[2]
    # `ctr tasks list`: a header, then TASK PID STATUS.
    for line in container_node.ctr("tasks", "list").splitlines()[1:]:
        task, pid, _ = line.split()
        if task == container:
            return Path("/proc", pid)
    raise AssertionError(f"the runtime runs no task of container {container}")


def test_the_charts_ollama_pod_serves_the_model_from_its_volume(
    helm: Helm,
    container_node: ContainerNode,
    node_kubectl: Kubectl,
    ollama_image: str,
    ollama_dir: Path,
) -> None:
    """helm install with `modelSource: volume` on a real node: the chart's Ollama pod (its
    command, environment, user, read-only root and volumes) runs the pinned build as a
    container, and the model answers through the chart's Service, by the API server's
    service proxy. Names a Service resolves to stay untested: the node runs no DNS."""
    namespace = f"ollama-{secrets.token_hex(3)}"
    # Not under pytest's tmp_path: that is private to root, and the pod reads the models as
    # the chart's user. Hard links: no copy of the model's bytes.
    root = Path(tempfile.mkdtemp(prefix="tars-ollama-models-"))
    root.chmod(0o755)
    models = root / "models"
    shutil.copytree(ollama_dir / "models", models, copy_function=os.link)
    repository, _, tag = ollama_image.rpartition(":")
    release = f"ol-{namespace[-6:]}"
    helm(
        "install", release, str(CHART), "--namespace", namespace, "--create-namespace",
        "--kubeconfig", str(container_node.plane.kubeconfig),
        "--set", "ollama.enabled=true", "--set", "ollama.modelSource=volume",
        "--set", f"ollama.modelVolume.hostPath.path={models}",
        "--set", f"ollama.image.repository={repository}", "--set", f"ollama.image.tag={tag}",
        # Made on the node from the pinned build; no registry is reachable to pull from.
        "--set", "ollama.image.pullPolicy=Never",
    )  # fmt: skip
    try:
        node_kubectl(
            "rollout", "status", f"deployment/{release}-tars-ollama", "-n", namespace,
            "--timeout=120s",
        )  # fmt: skip
        assert not node_kubectl("get", "jobs,pvc", "-n", namespace, "-o", "name").stdout.split()
        (pod,) = json.loads(
            node_kubectl(
                "get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=ollama",
                "-o", "json",
            ).stdout
        )["items"]  # fmt: skip
        # The image has no shell to look from inside: the server's process, seen from the host.
        server = container_process(container_node, pod)
        status_lines = (server / "status").read_text().splitlines()
        (uids,) = [line.split()[1:] for line in status_lines if line.startswith("Uid:")]
        assert uids == [str(pod["spec"]["securityContext"]["runAsUser"])] * 4, uids
        (root_mount,) = [
            line.split() for line in (server / "mountinfo").read_text().splitlines()
            if line.split()[4] == "/"
        ]  # fmt: skip
        assert "ro" in root_mount[5].split(","), root_mount
        proxy = f"/api/v1/namespaces/{namespace}/services/{release}-tars-ollama:http/proxy"
        tags = json.loads(node_kubectl("get", "--raw", f"{proxy}/api/tags").stdout)
        assert f"{ollama.TEST_MODEL}:latest" in [model["name"] for model in tags["models"]]
        request = root / "generate.json"
        request.write_text(
            json.dumps(
                {"model": ollama.TEST_MODEL, "prompt": "def add(a, b):", "stream": False,
                 "options": {"num_predict": 8}}
            )
        )  # fmt: skip
        answer = json.loads(
            node_kubectl("create", "--raw", f"{proxy}/api/generate", "-f", str(request)).stdout
        )
        assert answer["done"] and answer["eval_count"] > 0
    finally:
        helm(
            "uninstall", release, "--namespace", namespace, "--wait",
            "--kubeconfig", str(container_node.plane.kubeconfig),
        )  # fmt: skip
        node_kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        shutil.rmtree(root)
