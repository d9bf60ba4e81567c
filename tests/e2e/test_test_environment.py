"""A project that needs a package from PyPI, improved in the cluster on real pods.

The project imports `humanize`, which the replica image does not hold: under the
tester's own interpreter its baseline fails. With `--install` the tester pod makes a
virtualenv from PyPI (in bwrap, trusting the CA bundle the operator mounts from a
ConfigMap), the tests pass in it, the improvements are accepted, and a second run with
the same dependency files reuses the virtualenv. With `--test-image` the run gets a
tester pod of its own from an image holding `humanize` (examples/test-image/Dockerfile,
built here FROM the replica image), which alone tests it and is gone once it has ended.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tars_api.names import RUN_LABEL, run_tester
from tars_operator.config import CONFIG_PATH_ENV

from tests.e2e.conftest import operated_namespace, replica_pods_environment
from tests.harness.e2e import SETUP_TIMEOUT_SECONDS, Workspace
from tests.harness.images import Engine
from tests.harness.kubectl import Kubectl
from tests.harness.node import ContainerNode
from tests.harness.operator_process import get_json, http_get, wait_for
from tests.harness.projects import write_tree
from tests.harness.tools import git_init

# The machine's CA bundle: the one pip on this machine trusts to reach the index.
MACHINE_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CA_CONFIG_MAP = "package-index-ca"
GREETER = {
    "pyproject.toml": """\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "greeter"
        version = "1.0"
        dependencies = ["humanize"]

        [project.optional-dependencies]
        test = ["pytest"]

        [tool.setuptools]
        packages = ["greeter"]
        """,
    "greeter/__init__.py": """\
        from greeter.core import greet

        __all__ = ["greet"]
        """,
    "greeter/core.py": """\
        import os
        import sys

        import humanize


        def greet(count):
            if count == None:
                return "hello to nobody"
            return f"hello to {humanize.intcomma(count)} people"
        """,
    "tests/test_greeter.py": """\
        from greeter import greet


        def test_greet():
            assert greet(1234) == "hello to 1,234 people"


        def test_greet_nobody():
            assert greet(None) == "hello to nobody"
        """,
}


@pytest.fixture(scope="module")
def index_workspace(
    container_node: ContainerNode,
    node_kubectl: Kubectl,
    node_crds: list[str],
    replica_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Workspace]:
    """Real replica pods whose testers trust the machine's CA bundle, from a ConfigMap."""
    config = tmp_path_factory.mktemp("operator-config") / "operator.yaml"
    config.write_text(yaml.safe_dump({"package_index_ca": {"config_map": CA_CONFIG_MAP}}))
    environment = {**replica_pods_environment(replica_image), CONFIG_PATH_ENV: str(config)}
    with operated_namespace(
        container_node.plane.kubeconfig,
        node_kubectl,
        "test-env",
        tmp_path_factory.mktemp("operator"),
        environment,
    ) as workspace:
        node_kubectl(
            "create", "configmap", CA_CONFIG_MAP, "-n", workspace.namespace,
            f"--from-file=ca.crt={MACHINE_CA_BUNDLE}",
        )  # fmt: skip
        workspace.tarscli("self-code", "setup", "--timeout", SETUP_TIMEOUT_SECONDS)
        yield workspace


def greeter(root: Path, **overrides: str) -> Path:
    files = {**GREETER, **overrides}
    write_tree(root, {name: textwrap.dedent(text) for name, text in files.items()})
    return git_init(root, "greeter")


def finished_run(workspace: Workspace, kubectl: Kubectl, project: Path, *options: str) -> Any:
    """A run started and watched to its end (the setup can take a while: no fixed wait)."""
    name = workspace.tarscli("self-code", "start", "-t", "greeter", *options, cwd=project)
    name = name.stdout.strip()
    workspace.tarscli("self-code", "status", name, "--watch", check=False)
    return workspace.kubectl_json(kubectl, "selfcodingrun", name)


def completion(status: dict[str, Any]) -> str:
    return {c["type"]: c for c in status["conditions"]}["Complete"]["message"]


def test_without_a_test_environment_the_baseline_fails(
    index_workspace: Workspace, node_kubectl: Kubectl, tmp_path: Path
) -> None:
    run = finished_run(index_workspace, node_kubectl, greeter(tmp_path / "greeter"))
    status = run["status"]
    assert status["phase"] == "Failed", completion(status)
    assert "the project's tests fail before any change" in completion(status)
    assert "testEnvironment" not in status


def test_the_tester_installs_the_project_from_pypi_and_improvements_pass(
    index_workspace: Workspace, node_kubectl: Kubectl, tmp_path: Path
) -> None:
    project = greeter(tmp_path / "greeter")
    run = finished_run(index_workspace, node_kubectl, project, "--install")
    status = run["status"]
    assert status["phase"] == "Succeeded", status
    assert status["statistics"]["improvementsAccepted"] >= 1, status
    assert status["sandbox"].startswith("bwrap"), status["sandbox"]
    made = status["testEnvironment"]
    assert " made in " in made and "pip install .[test] pytest from https://pypi.org/simple" in made
    shown = index_workspace.tarscli("self-code", "status", run["metadata"]["name"]).stdout
    assert "Test environment" in shown and " made in " in shown

    patch = index_workspace.tarscli("self-code", "diff", run["metadata"]["name"]).stdout
    assert "-import os\n-import sys\n" in patch

    again = finished_run(index_workspace, node_kubectl, project, "--install")
    assert again["status"]["phase"] == "Succeeded", again["status"]
    reused = again["status"]["testEnvironment"]
    assert reused.startswith(made.split(" made in ")[0]) and " reused " in reused


def test_a_failed_setup_fails_the_run_with_its_output(
    index_workspace: Workspace, node_kubectl: Kubectl, tmp_path: Path
) -> None:
    missing = GREETER["pyproject.toml"].replace('"humanize"', '"tars-no-such-package-0xdead"')
    project = greeter(tmp_path / "greeter", **{"pyproject.toml": missing})
    run = finished_run(index_workspace, node_kubectl, project, "--install")
    status = run["status"]
    assert status["phase"] == "Failed", status
    assert "test environment setup failed after " in completion(status)
    assert "tars-no-such-package-0xdead" in completion(status)
    assert status["testEnvironment"].startswith("test environment setup failed")


@pytest.fixture(scope="module")
def greeter_test_image(
    image_engine: Engine, replica_image: str, load_node_image: Callable[[str], str]
) -> str:
    """The greeter's test image, FROM the replica image with humanize, in the node's runtime."""
    return load_node_image(image_engine.build_test_image("tars-greeter-tests", "humanize\n"))


def running_pod(workspace: Workspace, kubectl: Kubectl, replica: str) -> dict[str, Any] | None:
    pods = workspace.kubectl_json(kubectl, "pods", "-l", f"app.kubernetes.io/instance={replica}")
    running = [pod for pod in pods["items"] if pod["status"].get("phase") == "Running"]
    return running[0] if len(running) == 1 and running[0]["status"].get("podIP") else None


def requests_per_tester(workspace: Workspace, kubectl: Kubectl) -> Counter[str]:
    """Requests the coordinator pod has sent to each tester endpoint (its /metrics)."""
    coordinator = running_pod(workspace, kubectl, "coordinator")
    assert coordinator is not None, "no running coordinator pod"
    code, metrics = http_get(f"http://{coordinator['status']['podIP']}:8080/metrics")
    assert code == 200, metrics
    counts: Counter[str] = Counter()
    for line in metrics.splitlines():
        if line.startswith("tars_coordinator_requests_total{") and 'role="tester"' in line:
            endpoint = line.split('endpoint="', 1)[1].split('"', 1)[0]
            counts[endpoint] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def test_a_test_image_tests_its_run_alone_in_a_tester_of_its_own_gone_at_the_end(
    index_workspace: Workspace, node_kubectl: Kubectl, greeter_test_image: str, tmp_path: Path
) -> None:
    namespace = index_workspace.namespace
    before = requests_per_tester(index_workspace, node_kubectl)
    project = greeter(tmp_path / "greeter")
    started = index_workspace.tarscli(
        "self-code", "start", "-t", "greeter", "--test-image", greeter_test_image, cwd=project
    )
    name = started.stdout.strip()
    run = index_workspace.kubectl_json(node_kubectl, "selfcodingrun", name)
    tester = wait_for(
        lambda: get_json(node_kubectl, "tarsreplica", run_tester(name), "-n", namespace),
        "the run's own tester",
    )
    assert tester["metadata"]["labels"][RUN_LABEL] == name
    assert [
        (owner["kind"], owner["name"], owner["uid"], owner.get("controller"))
        for owner in tester["metadata"]["ownerReferences"]
    ] == [("SelfCodingRun", name, run["metadata"]["uid"], True)]
    assert (tester["spec"]["role"], tester["spec"]["image"]) == ("tester", greeter_test_image)
    pod = wait_for(
        lambda: running_pod(index_workspace, node_kubectl, run_tester(name)), "its tester pod"
    )
    assert [container["image"] for container in pod["spec"]["containers"]] == [greeter_test_image]
    own_endpoint = f"http://{pod['status']['podIP']}:8080"

    index_workspace.tarscli("self-code", "status", name, "--watch", check=False)
    status = index_workspace.kubectl_json(node_kubectl, "selfcodingrun", name)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["statistics"]["improvementsAccepted"] >= 1, status
    assert status["testEnvironment"].startswith(f"image {greeter_test_image}: its own Python")
    patch = index_workspace.tarscli("self-code", "diff", name).stdout
    assert "-import os\n-import sys\n" in patch

    after = requests_per_tester(index_workspace, node_kubectl)
    assert after[own_endpoint] > 0, after
    shared = {endpoint for endpoint in after if endpoint != own_endpoint}
    assert {endpoint: after[endpoint] for endpoint in shared} == {
        endpoint: before[endpoint] for endpoint in shared
    }, "the shared tester got requests of a run with a test image"

    wait_for(
        lambda: all(
            get_json(node_kubectl, kind, run_tester(name), "-n", namespace) is None
            for kind in ("tarsreplica", "deployment", "service")
        ),
        "the run's tester, its Deployment and Service to go once the run ended",
    )
