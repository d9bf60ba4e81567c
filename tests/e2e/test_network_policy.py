"""The chart's egress policies for tester pods hold on the real node.

The chart renders (`helm template`) its tester policies with one package index allowed: an
address and port of the node. kube-router's policy controller (`container_node`) enforces
them. HTTP servers on the node's own bridge addresses answer on the allowed address and port,
on another port, and on another address; a pod with the tester's labels reaches only the
first, and a pod without them reaches every one, so the network itself is not what refuses.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.conftest import create_namespace
from tests.harness import controlplane, network_policy
from tests.harness.chart import CHART, documents
from tests.harness.kubectl import SETTLE_SECONDS, Kubectl
from tests.harness.node import BRIDGE, NODE_IP, ContainerNode
from tests.harness.operator_process import wait_for
from tests.harness.tools import run_tool

# A second address of the node's bridge, outside the pods' subnet and the Services' range:
# the same host, reached at an address the policy does not allow.
OTHER_NODE_ADDRESS = "10.244.1.1"
# Long enough for an allowed answer from this machine, short enough to call silence a drop.
PROBE_TIMEOUT_SECONDS = 5
PROBE = """\
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as response:
        print(response.read().decode())
except OSError as error:
    print(f"unreachable: {error}")
"""


@contextmanager
def http_server(address: str, port: int, answer: str) -> Iterator[str]:
    """An HTTP server on ADDRESS:PORT answering ANSWER to every GET; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = answer.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer((address, port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{address}:{port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def bridge_address(address: str) -> Iterator[None]:
    run_tool(["ip", "address", "add", f"{address}/32", "dev", BRIDGE])
    try:
        yield
    finally:
        run_tool(["ip", "address", "delete", f"{address}/32", "dev", BRIDGE], check=False)


def chart_policies(tools_dir: Path, namespace: str, cidr: str, port: int) -> list[dict]:
    rendered = run_tool(
        [
            str(tools_dir / "helm"),
            "template",
            "tars",
            str(CHART),
            "--namespace",
            namespace,
            "--set",
            f"sandbox.packageIndex.cidrs={{{cidr}}}",
            "--set",
            f"sandbox.packageIndex.ports={{{port}}}",
        ]
    ).stdout
    return [manifest for manifest in documents(rendered) if manifest["kind"] == "NetworkPolicy"]


def sleeping_pod(name: str, namespace: str, image: str, labels: dict[str, str]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", "import time; time.sleep(86400)"],
                }
            ],
        },
    }


def enforced_for(pod: str, namespace: str, policies: list[str]) -> bool:
    """Whether kube-router has written POD's firewall chain, run through POLICIES."""
    rules = network_policy.filter_rules()
    return f"POD name:{pod} namespace: {namespace}" in rules and all(
        f"run through nw policy {policy}" in rules for policy in policies
    )


@pytest.fixture
def policy_namespace(container_node: ContainerNode, node_kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace; afterwards the policy controller's log, which pytest shows when the
    test failed."""
    namespace = create_namespace(node_kubectl, "netpol")
    try:
        yield namespace
    finally:
        node_kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        log = network_policy.log_path(container_node)
        print(f"--- {log}\n{log.read_text(errors='replace')}")


def test_tester_pods_reach_only_the_package_index(
    container_node: ContainerNode,
    node_kubectl: Kubectl,
    replica_image: str,
    policy_namespace: str,
) -> None:
    index_port, other_port = controlplane.free_port(), controlplane.free_port()
    policies = chart_policies(
        container_node.plane.tools_dir, policy_namespace, f"{NODE_IP}/32", index_port
    )
    assert sorted(p["metadata"]["name"] for p in policies) == [
        "tars-tester-deny-egress",
        "tars-tester-package-index",
    ]
    tester_labels = policies[0]["spec"]["podSelector"]["matchLabels"]
    pods = [
        sleeping_pod("tester", policy_namespace, replica_image, tester_labels),
        sleeping_pod("bystander", policy_namespace, replica_image, {}),
    ]
    items = {"kind": "List", "apiVersion": "v1", "items": [*policies, *pods]}
    node_kubectl("apply", "-f", "-", input=json.dumps(items))
    node_kubectl(
        "wait",
        "pod",
        "--all",
        "-n",
        policy_namespace,
        "--for=condition=Ready",
        f"--timeout={SETTLE_SECONDS}s",
    )
    wait_for(
        lambda: enforced_for("tester", policy_namespace, [p["metadata"]["name"] for p in policies]),
        "kube-router to enforce the tester's policies",
    )
    wait_for(
        lambda: enforced_for("bystander", policy_namespace, []),
        "kube-router to see the bystander pod",
    )

    def probe(pod: str, url: str) -> str:
        return node_kubectl(
            "exec",
            pod,
            "-n",
            policy_namespace,
            "--",
            "python",
            "-c",
            PROBE,
            url,
            str(PROBE_TIMEOUT_SECONDS),
        ).stdout.strip()

    with (
        bridge_address(OTHER_NODE_ADDRESS),
        http_server(NODE_IP, index_port, "package index") as index,
        http_server(NODE_IP, other_port, "other port") as other_port_url,
        http_server(OTHER_NODE_ADDRESS, index_port, "other address") as other_address_url,
    ):
        assert probe("bystander", index) == "package index"
        assert probe("bystander", other_port_url) == "other port"
        assert probe("bystander", other_address_url) == "other address"
        assert probe("tester", index) == "package index"
        assert probe("tester", other_port_url).startswith("unreachable:")
        assert probe("tester", other_address_url).startswith("unreachable:")
