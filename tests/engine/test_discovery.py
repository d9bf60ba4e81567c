"""Finding the worker replicas: static lists, and TarsReplicas + EndpointSlices watched in a real API server."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from kubernetes import client
from tars_api.names import RUN_LABEL
from tars_api.replica import TarsReplica
from tars_api.vocabulary import Role
from tars_engine.cluster.discovery import ClusterDiscovery, RoleDirectory, static_endpoints
from tars_engine.core.role_pool import RolePool

WAIT_SECONDS = 60


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_static_endpoints_from_the_environment() -> None:
    env = {
        "TARS_ENDPOINTS_ANALYZER": "http://10.0.0.1:8080/",
        "TARS_ENDPOINTS_GENERATOR": "http://10.0.0.2:8080, http://10.0.0.3:8080",
        "TARS_ENDPOINTS_TESTER": "",
    }
    found = static_endpoints(env)
    assert found == {
        Role.analyzer: ["http://10.0.0.1:8080"],
        Role.generator: ["http://10.0.0.2:8080", "http://10.0.0.3:8080"],
    }
    directory = RoleDirectory.static(found)
    assert directory.missing_roles() == [Role.tester]
    assert directory.wait_for_roles(0.01) == [Role.tester]


def test_a_runs_own_testers_keep_their_clients_while_their_endpoints_come_and_go() -> None:
    directory = RoleDirectory.static(
        {role: [f"http://{role.value}:8080"] for role in (Role.analyzer, Role.generator)}
    )
    directory.set_run_testers({"r1": ["http://10.0.1.1:8080"]})
    own = directory.testers_for("r1")
    assert own.urls() == ["http://10.0.1.1:8080"]
    assert directory.missing_roles() == [Role.tester]
    assert directory.missing_roles("r1") == []
    directory.set_run_testers({})
    assert directory.wait_for_roles(0.01, "r1") == [Role.tester]
    directory.set_run_testers({"r1": ["http://10.0.1.2:8080"]})
    assert directory.testers_for("r1") is own and own.urls() == ["http://10.0.1.2:8080"]
    assert directory.endpoints(Role.tester) == []
    directory.forget_run("r1")
    assert directory.testers_for("r1") is not own


def test_clients_keep_their_identity_and_the_pool_hands_out_new_ones_first() -> None:
    directory = RoleDirectory.static({Role.generator: ["http://10.0.0.2:8080"]})
    first = directory.generators.ready()[0]
    directory.set_endpoints(Role.generator, ["http://10.0.0.2:8080", "http://10.0.0.3:8080"])
    assert first in directory.generators.ready()
    pool = RolePool(directory.generators.ready, max_parallel=8)
    leased = []
    for _ in range(4):
        with pool.lease(lambda: None) as generator:
            leased.append(generator.base_url)
    assert leased == ["http://10.0.0.2:8080", "http://10.0.0.3:8080"] * 2
    directory.set_endpoints(Role.generator, ["http://10.0.0.3:8080"])
    with pool.lease(lambda: None) as generator:
        assert generator.base_url == "http://10.0.0.3:8080"


def endpoint_slice(service: str, addresses: list[tuple[str, bool]]) -> client.V1EndpointSlice:
    return client.V1EndpointSlice(
        metadata=client.V1ObjectMeta(
            name=f"{service}-abcde", labels={"kubernetes.io/service-name": service}
        ),
        address_type="IPv4",
        ports=[client.DiscoveryV1EndpointPort(name="http", port=8080, protocol="TCP")],
        endpoints=[
            client.V1Endpoint(
                addresses=[address], conditions=client.V1EndpointConditions(ready=ready)
            )
            for address, ready in addresses
        ],
    )


def test_cluster_discovery_follows_replicas_and_their_ready_endpoints(
    api_client: client.ApiClient, namespace: str, tars_crds: list[str], kubeconfig: Path
) -> None:
    custom = client.CustomObjectsApi(api_client)
    slices = client.DiscoveryV1Api(api_client)
    for name, role in (("analyzer", Role.analyzer), ("generator", Role.generator)):
        custom.create_namespaced_custom_object(
            "tars.dev",
            "v1alpha1",
            namespace,
            "tarsreplicas",
            TarsReplica.build(name, role, namespace=namespace).to_dict(),
        )
    slices.create_namespaced_endpoint_slice(
        namespace, endpoint_slice("analyzer", [("198.18.0.11", True)])
    )
    slices.create_namespaced_endpoint_slice(
        namespace, endpoint_slice("generator", [("198.18.0.21", True), ("198.18.0.22", False)])
    )
    # A Service that is no TarsReplica's: never a worker.
    slices.create_namespaced_endpoint_slice(
        namespace, endpoint_slice("other", [("198.18.0.99", True)])
    )

    discovery = ClusterDiscovery(api_client, namespace).start()
    try:
        directory = discovery.directory
        wait_for(
            lambda: directory.endpoints(Role.generator) == ["http://198.18.0.21:8080"],
            "the ready generator",
        )
        assert directory.endpoints(Role.analyzer) == ["http://198.18.0.11:8080"]
        assert directory.missing_roles() == [Role.tester]

        # Scaled to three: the watch sees the slice grow.
        slices.patch_namespaced_endpoint_slice(
            "generator-abcde",
            namespace,
            endpoint_slice(
                "generator", [("198.18.0.21", True), ("198.18.0.22", True), ("198.18.0.23", True)]
            ),
        )
        wait_for(lambda: len(directory.endpoints(Role.generator)) == 3, "three generators")

        custom.create_namespaced_custom_object(
            "tars.dev",
            "v1alpha1",
            namespace,
            "tarsreplicas",
            TarsReplica.build("tester", Role.tester, namespace=namespace).to_dict(),
        )
        slices.create_namespaced_endpoint_slice(
            namespace, endpoint_slice("tester", [("198.18.0.31", True)])
        )
        assert directory.wait_for_roles(WAIT_SECONDS) == []

        slices.delete_namespaced_endpoint_slice("generator-abcde", namespace)
        wait_for(lambda: directory.endpoints(Role.generator) == [], "the generators to go")
    finally:
        discovery.close()


def test_a_runs_own_testers_serve_that_run_alone(
    api_client: client.ApiClient, namespace: str, tars_crds: list[str]
) -> None:
    custom = client.CustomObjectsApi(api_client)
    slices = client.DiscoveryV1Api(api_client)
    replicas = [
        TarsReplica.build("analyzer", Role.analyzer, namespace=namespace),
        TarsReplica.build("generator", Role.generator, namespace=namespace),
        TarsReplica.build("tester", Role.tester, namespace=namespace),
        TarsReplica.build("r1-tester", Role.tester, namespace=namespace, labels={RUN_LABEL: "r1"}),
    ]
    for replica in replicas:
        custom.create_namespaced_custom_object(
            "tars.dev", "v1alpha1", namespace, "tarsreplicas", replica.to_dict()
        )
    for service, address in (
        ("analyzer", "198.18.1.11"),
        ("generator", "198.18.1.21"),
        ("tester", "198.18.1.31"),
        ("r1-tester", "198.18.1.41"),
    ):
        slices.create_namespaced_endpoint_slice(
            namespace, endpoint_slice(service, [(address, True)])
        )

    discovery = ClusterDiscovery(api_client, namespace).start()
    try:
        directory = discovery.directory
        own = directory.testers_for("r1")
        wait_for(lambda: own.urls() == ["http://198.18.1.41:8080"], "r1's own tester")
        wait_for(lambda: directory.missing_roles() == [], "the shared pool")
        # The run's tester is never in the shared pool; the shared one never serves r1.
        assert directory.endpoints(Role.tester) == ["http://198.18.1.31:8080"]
        assert directory.testers_for(None) is directory.testers
        # Another run with a test image has no tester until one labelled with it is ready.
        assert directory.wait_for_roles(0.01, "r2") == [Role.tester]

        slices.delete_namespaced_endpoint_slice("r1-tester-abcde", namespace)
        wait_for(lambda: own.urls() == [], "r1's tester to go")
        assert directory.missing_roles("r1") == [Role.tester]
        assert directory.endpoints(Role.tester) == ["http://198.18.1.31:8080"]
        directory.forget_run("r1")
        assert directory.testers_for("r1") is not own
    finally:
        discovery.close()
