"""Fixtures for tests against real components: the control plane (etcd, kube-apiserver,
kube-controller-manager), a node that runs pods as containers, an Ollama server with a
small model, and the project's images.

Each is started once per session, and only when a test asks for one of its fixtures;
tests that don't need it never start it. The builds come from `make tools` through
TARS_TOOLS_DIR, from `make node` through TARS_NODE_DIR, from `make ollama` through
TARS_OLLAMA_DIR and from `make images` through TARS_IMAGES_DIR (`make test` sets them all),
kind's from `make kind` through TARS_KIND_DIR (`make test-kind`).
Without them these tests skip, except under CI=true where they fail.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.harness import controlplane, images, network_policy, node, ollama
from tests.harness.kubectl import REPOSITORY, SETTLE_SECONDS, Kubectl
from tests.harness.tools import missing_component, run_tool


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks every test that uses the control plane, so `-m "not controlplane"` skips them."""
    for item in items:
        # fixturenames holds every fixture a test needs, directly or through other fixtures.
        if "control_plane" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.controlplane)


def _build_or_skip(
    variable: str,
    problem_with: Callable[[Path], str | None],
    make: str,
    runner: str = "make test",
) -> Path:
    """The directory `variable` names, once it holds what the tests need.

    Without it a test skips, except under CI=true, where a missing real component fails.
    """
    value = os.environ.get(variable, "")
    if not value:
        problem = f"{variable} is not set; run the tests with `{runner}` (it runs `{make}`)"
    else:
        problem = problem_with(Path(value)) or ""
    if problem:
        missing_component(problem)
    return Path(value)


def _missing_tools(tools_dir: Path) -> str | None:
    missing = controlplane.missing_binaries(tools_dir)
    return f"{tools_dir} lacks {', '.join(missing)}; run `make tools`" if missing else None


def _missing_kind(kind_dir: Path) -> str | None:
    if not os.access(kind_dir / "bin" / "kind", os.X_OK) or not (kind_dir / "node-image").is_file():
        return f"{kind_dir} lacks bin/kind or node-image; run `make kind`"
    if shutil.which("podman") is None and shutil.which("docker") is None:
        return "kind runs its node with docker or podman, and neither is here; run `make kind`"
    return None


@pytest.fixture(scope="session")
def tools_dir() -> Path:
    """The pinned control plane's binaries, kubectl and helm (`make tools`)."""
    return _build_or_skip("TARS_TOOLS_DIR", _missing_tools, "make tools")


@pytest.fixture(scope="session")
def kind_dir() -> Path:
    """kind, its node image's name and what built them (`make kind`)."""
    return _build_or_skip("TARS_KIND_DIR", _missing_kind, "make kind", "make test-kind")


@pytest.fixture
def node_held() -> Iterator[None]:
    """The machine's node lock, for a test whose cluster runs beside no node (kind's)."""
    busy = None
    try:
        with node.holding_node(node.session_holder()):
            yield
    except node.NodeBusyError as error:
        busy = str(error)
    if busy:
        pytest.fail(busy, pytrace=False)


@pytest.fixture(scope="session")
def control_plane(
    tools_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[controlplane.ControlPlane]:
    """A running control plane: `.kubeconfig` (admin), `.server`, `.tools_dir`, `.state_dir`."""
    state_dir = tmp_path_factory.mktemp("controlplane")
    plane = controlplane.up(state_dir, tools_dir)
    try:
        yield plane
    finally:
        controlplane.down(state_dir)


@pytest.fixture(scope="session")
def container_node(
    tools_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[node.ContainerNode]:
    """A cluster of its own with a real node (kubelet, kube-proxy, containerd, runc) and
    kube-scheduler, whose API server pods reach at the `kubernetes` Service, and kube-router's
    network policy controller, which enforces the pods' NetworkPolicies.

    Not the session's `control_plane`: its API server advertises loopback, which pods cannot
    reach, and its tests rely on nothing running the pods they create.
    """
    node_dir = _build_or_skip("TARS_NODE_DIR", node.missing_build, "make node")
    kube_router_dir = _build_or_skip(
        "TARS_KUBE_ROUTER_DIR", network_policy.missing_build, "make kube-router"
    )
    state_dir = tmp_path_factory.mktemp("node-cluster")
    plane = controlplane.up(state_dir / "control-plane", tools_dir, advertise_address=node.NODE_IP)
    # Not under pytest's own directory, which only root may enter: the node's pods with
    # a user namespace of their own have their root filesystems in here.
    node_state = Path(tempfile.mkdtemp(prefix="tars-node-"))
    node_state.chmod(0o755)
    busy = None
    try:
        with (
            node.ContainerNode(plane, node_dir, node_state) as running,
            network_policy.PolicyController(running, kube_router_dir),
        ):
            yield running
    except node.NodeBusyError as error:
        busy = str(error)
    finally:
        controlplane.down(state_dir / "control-plane")
        shutil.rmtree(node_state, ignore_errors=True)
    # Outside the handler, so that the one line is all a failing test shows.
    if busy:
        pytest.fail(busy, pytrace=False)


@pytest.fixture(scope="session")
def ollama_dir() -> Path:
    """The pinned Ollama build and its models directory (`make ollama`)."""
    return _build_or_skip("TARS_OLLAMA_DIR", ollama.missing_build, "make ollama")


@pytest.fixture(scope="session")
def image_engine() -> images.Engine:
    """Runs containers from the images `make images` built (TARS_IMAGES_DIR)."""
    images_dir = _build_or_skip("TARS_IMAGES_DIR", images.missing_build, "make images")
    return images.Engine(images.load_build(images_dir))


@pytest.fixture(scope="session")
def load_node_image(
    container_node: node.ContainerNode, image_engine: images.Engine
) -> Callable[[str], str]:
    """Loads an image `make images` built into the node's runtime; returns its reference."""
    problem = image_engine.available()
    if problem:
        missing_component(problem)

    def load(reference: str) -> str:
        container_node.load_built_image(image_engine, reference)
        return reference

    return load


@pytest.fixture(scope="session")
def replica_image(load_node_image: Callable[[str], str], image_engine: images.Engine) -> str:
    """The replica image `make images` built, in the node's runtime."""
    return load_node_image(image_engine.build.replica)


@pytest.fixture(scope="session")
def operator_image(load_node_image: Callable[[str], str], image_engine: images.Engine) -> str:
    """The operator image `make images` built, in the node's runtime."""
    return load_node_image(image_engine.build.operator)


@pytest.fixture(scope="session")
def ollama_image(container_node: node.ContainerNode, ollama_dir: Path) -> str:
    """The pinned Ollama build (`make ollama`) as an image in the node's runtime."""
    reference = f"{ollama.IMAGE_REPOSITORY}:{ollama.version(ollama_dir)}"
    if reference not in container_node.images():
        container_node.import_archive(ollama.image_archive(ollama_dir, reference))
    return reference


@pytest.fixture(scope="session")
def ollama_server(
    ollama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ollama.OllamaServer]:
    """A real `ollama serve` on loopback with the small test model (`ollama.TEST_MODEL`)."""
    log = tmp_path_factory.mktemp("ollama") / "serve.log"
    with ollama.running(ollama_dir, log) as server:
        yield server


@pytest.fixture(scope="session")
def node_ollama_server(
    container_node: node.ContainerNode, ollama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ollama.OllamaServer]:
    """A real `ollama serve` with the test model on the node's address, where its pods reach it."""
    log = tmp_path_factory.mktemp("node-ollama") / "serve.log"
    with ollama.running(ollama_dir, log, host=node.NODE_IP) as server:
        yield server


@pytest.fixture(scope="session")
def kubeconfig(control_plane: controlplane.ControlPlane) -> Path:
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> Iterator[client.ApiClient]:
    """A `kubernetes` client with cluster-admin rights (group system:masters)."""
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield api
    finally:
        api.close()


def _kubectl_for(plane: controlplane.ControlPlane, cache_dir: Path) -> Kubectl:
    def run(
        *args: str, input: str | None = None, check: bool = True, as_user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        command = [
            str(plane.tools_dir / "kubectl"),
            f"--kubeconfig={plane.kubeconfig}",
            f"--cache-dir={cache_dir}",
            *([f"--as={as_user}"] if as_user else []),
            *args,
        ]
        return run_tool(command, check=check, input=input, timeout=SETTLE_SECONDS)

    return run


@pytest.fixture(scope="session")
def kubectl(
    control_plane: controlplane.ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Kubectl:
    """Runs the built kubectl against the control plane as admin, or `as_user` (--as)."""
    return _kubectl_for(control_plane, tmp_path_factory.mktemp("kubectl-cache"))


@pytest.fixture(scope="session")
def node_kubectl(
    container_node: node.ContainerNode, tmp_path_factory: pytest.TempPathFactory
) -> Kubectl:
    """kubectl as admin against the cluster of `container_node`."""
    return _kubectl_for(container_node.plane, tmp_path_factory.mktemp("node-kubectl-cache"))


@pytest.fixture
def namespace(api_client: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, ready for pods; deleted (not awaited) afterwards."""
    core = client.CoreV1Api(api_client)
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug or 'test'}-{secrets.token_hex(3)}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # The ServiceAccount admission plugin refuses pods until the controller-manager has
    # created the namespace's `default` ServiceAccount.
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except ApiException as error:
            if error.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.1)
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except ApiException as error:
            if error.status != 404:
                raise


def _apply_crds(kubectl: Kubectl) -> list[str]:
    """Applies every crds/*.yaml (server-side) and waits until each CRD is Established.

    Returns the CRD names, e.g. `tarsreplicas.tars.dev`.
    """
    files = sorted((REPOSITORY / "crds").glob("*.yaml"))
    if not files:
        pytest.fail(f"{REPOSITORY / 'crds'} holds no CRD YAML; generate it with `make crds`")
    file_arguments = [argument for file in files for argument in ("-f", str(file))]
    applied = kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=tars-tests",
        "-o", "name", *file_arguments,
    )  # fmt: skip
    kubectl("wait", "--for=condition=Established", f"--timeout={SETTLE_SECONDS}s", *file_arguments)
    return [line.split("/", 1)[1] for line in applied.stdout.split()]


@pytest.fixture(scope="session")
def tars_crds(kubectl: Kubectl) -> list[str]:
    return _apply_crds(kubectl)


@pytest.fixture(scope="session")
def node_crds(node_kubectl: Kubectl) -> list[str]:
    return _apply_crds(node_kubectl)
