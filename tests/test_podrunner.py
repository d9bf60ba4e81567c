"""The test-only pod runner plays the kubelet: real control plane, real processes, real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable
from functools import partial
from ipaddress import ip_address
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.harness import controlplane
from tests.harness.kubectl import REPOSITORY, SETTLE_SECONDS, Kubectl
from tests.harness.podrunner import POD_NETWORK, PodRunner, expand

T = TypeVar("T")


def eventually(check: Callable[[], T | None], what: str) -> T:
    """Polls CHECK until it returns something truthy; fails after SETTLE_SECONDS."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.2)


def process_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def process_gone(pid: int) -> bool:
    return not process_alive(pid)


def container_pid(pod: Any, container: str = "main") -> int:
    status = next(s for s in pod.status.container_statuses if s.name == container)
    scheme, _, pid = status.container_id.partition("://")
    assert scheme == "process"
    return int(pid)


def python_container(script: str, **fields: Any) -> client.V1Container:
    return client.V1Container(
        name="main",
        image="python:3.11",
        command=["python", "-c", textwrap.dedent(script)],
        **fields,
    )


def pod_manifest(name: str, container: client.V1Container, **spec: Any) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": name}),
        spec=client.V1PodSpec(containers=[container], **spec),
    )


def finished_pod(core: client.CoreV1Api, namespace: str, name: str) -> Any:
    def terminal() -> Any:
        pod: Any = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in ("Succeeded", "Failed") else None

    return eventually(terminal, f"pod {name} finishes")


def running_pod(core: client.CoreV1Api, namespace: str, name: str) -> Any:
    def running() -> Any:
        pod: Any = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase == "Running" and pod.status.container_statuses else None

    return eventually(running, f"pod {name} runs")


def event_reasons(core: client.CoreV1Api, namespace: str, pod: str) -> set[str]:
    events: list[Any] = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={pod}"
    ).items
    return {event.reason for event in events}


def printed_json(runner: PodRunner, namespace: str, pod: str) -> Any:
    return json.loads(runner.log_path(namespace, pod, "main").read_text().splitlines()[-1])


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        ("$(A)", "alpha"),
        ("x-$(A)-$(B)", "x-alpha-beta"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$alpha"),
        ("$(A", "$(A"),
        ("cost $5", "cost $5"),
        ("trailing $", "trailing $"),
        ("$()", "$()"),
    ],
)
def test_expansion_follows_kubernetes(text: str, expanded: str) -> None:
    assert expand(text, {"A": "alpha", "B": "beta"}) == expanded


HTTP_SERVER = ["python", "-m", "http.server", "--bind", "$(POD_IP)", "8080"]


def web_deployment(name: str, replicas: int) -> client.V1Deployment:
    container = client.V1Container(
        name="web",
        image="python:3.11",
        command=HTTP_SERVER,
        env=[
            client.V1EnvVar(
                name="POD_IP",
                value_from=client.V1EnvVarSource(
                    field_ref=client.V1ObjectFieldSelector(field_path="status.podIP")
                ),
            )
        ],
        ports=[client.V1ContainerPort(name="http", container_port=8080)],
        readiness_probe=client.V1Probe(
            http_get=client.V1HTTPGetAction(path="/", port="http"), period_seconds=1
        ),
    )
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels={"app": name}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": name}),
                spec=client.V1PodSpec(containers=[container], termination_grace_period_seconds=5),
            ),
        ),
    )


def test_deployment_pods_serve_on_their_own_addresses_and_scale(
    pod_runner: PodRunner, api_client: client.ApiClient, namespace: str
) -> None:
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    discovery = client.DiscoveryV1Api(api_client)
    apps.create_namespaced_deployment(namespace, web_deployment("web", 2))
    core.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1ServiceSpec(
                selector={"app": "web"}, ports=[client.V1ServicePort(port=80, target_port=8080)]
            ),
        ),
    )

    def ready_pods(count: int) -> Callable[[], list[Any] | None]:
        def check() -> list[Any] | None:
            deployment: Any = apps.read_namespaced_deployment("web", namespace)
            pods: list[Any] = core.list_namespaced_pod(namespace, label_selector="app=web").items
            live = [pod for pod in pods if pod.metadata.deletion_timestamp is None]
            ready = [
                pod
                for pod in live
                if any(
                    c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
                )
            ]
            settled = (deployment.status.ready_replicas or 0) == count == len(ready) == len(pods)
            return ready if settled else None

        return check

    pods = eventually(ready_pods(2), "two ready web pods")
    addresses = {pod.status.pod_ip for pod in pods}
    assert len(addresses) == 2
    for pod in pods:
        assert pod.spec.node_name == pod_runner.node_name
        assert ip_address(pod.status.pod_ip) in POD_NETWORK
        assert pod.status.host_ip == "127.0.0.1"
        with urllib.request.urlopen(f"http://{pod.status.pod_ip}:8080/", timeout=10) as response:
            assert response.status == 200

    def published(expected: set[str]) -> Callable[[], bool]:
        def check() -> bool:
            slices: list[Any] = discovery.list_namespaced_endpoint_slice(
                namespace, label_selector="kubernetes.io/service-name=web"
            ).items
            ready = {
                address
                for endpoint_slice in slices
                for endpoint in endpoint_slice.endpoints or []
                if endpoint.conditions.ready
                for address in endpoint.addresses
            }
            return ready == expected

        return check

    eventually(published(addresses), "the EndpointSlice lists both pod addresses as ready")

    apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 3}})
    pods = eventually(ready_pods(3), "three ready web pods")
    pids = {pod.metadata.name: container_pid(pod, "web") for pod in pods}
    assert all(process_alive(pid) for pid in pids.values())
    eventually(published({pod.status.pod_ip for pod in pods}), "the EndpointSlice lists three")

    apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 1}})
    (survivor,) = eventually(ready_pods(1), "one web pod left")
    for name, pid in pids.items():
        if name != survivor.metadata.name:
            eventually(partial(process_gone, pid), f"process {pid} of {name} ends")
    assert process_alive(pids[survivor.metadata.name])
    assert pod_runner.pids(namespace, survivor.metadata.name) == {
        "web": pids[survivor.metadata.name]
    }


def test_deleting_a_pod_kills_its_process_group_and_removes_it(
    pod_runner: PodRunner, api_client: client.ApiClient, kubectl: Kubectl, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    # The child ignores SIGTERM, so only the SIGKILL after the grace period ends it.
    script = """
        import os, signal, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"])
        print(child.pid, flush=True)
        time.sleep(3600)
    """
    core.create_namespaced_pod(
        namespace,
        pod_manifest("sleeper", python_container(script), termination_grace_period_seconds=1),
    )
    pod = running_pod(core, namespace, "sleeper")
    leader = container_pid(pod)
    log = pod_runner.log_path(namespace, "sleeper", "main")
    child = int(eventually(lambda: log.read_text().strip(), "the child's pid is printed"))
    assert process_alive(leader) and process_alive(child)
    assert os.getpgid(child) == leader
    # The API server proxies `kubectl logs` to the runner's log endpoint.
    assert kubectl("logs", "-n", namespace, "sleeper", "--tail=1").stdout.strip() == str(child)

    core.delete_namespaced_pod("sleeper", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("sleeper", namespace)
        except ApiException as error:
            return error.status == 404
        return False

    eventually(gone, "the pod object is finalized")
    assert not process_alive(leader)
    assert not process_alive(child)
    assert pod_runner.pids(namespace, "sleeper") == {}


ENV_DUMP = """
    import json, os, sys
    print(json.dumps({"env": dict(os.environ), "argv": sys.argv[1:], "cwd": os.getcwd()}))
"""


def test_environment_downward_api_and_variable_expansion(
    pod_runner: PodRunner, api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="settings"),
            data={"MODE": "fast", "LEVEL": "3"},
        ),
    )
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="creds"), string_data={"token": "s3cret"}
        ),
    )

    def field(path: str) -> client.V1EnvVarSource:
        return client.V1EnvVarSource(field_ref=client.V1ObjectFieldSelector(field_path=path))

    env = [
        client.V1EnvVar(name="POD_NAME", value_from=field("metadata.name")),
        client.V1EnvVar(name="POD_NAMESPACE", value_from=field("metadata.namespace")),
        client.V1EnvVar(name="POD_IP", value_from=field("status.podIP")),
        client.V1EnvVar(name="NODE", value_from=field("spec.nodeName")),
        client.V1EnvVar(name="ACCOUNT", value_from=field("spec.serviceAccountName")),
        client.V1EnvVar(name="APP", value_from=field("metadata.labels['app']")),
        client.V1EnvVar(name="URL", value="http://$(POD_IP):8080/$(CFG_MODE)"),
        client.V1EnvVar(name="LITERAL", value="$$(POD_IP)"),
        client.V1EnvVar(name="UNKNOWN", value="$(NOT_DEFINED)"),
        client.V1EnvVar(
            name="MODE",
            value_from=client.V1EnvVarSource(
                config_map_key_ref=client.V1ConfigMapKeySelector(name="settings", key="MODE")
            ),
        ),
        client.V1EnvVar(
            name="TOKEN",
            value_from=client.V1EnvVarSource(
                secret_key_ref=client.V1SecretKeySelector(name="creds", key="token")
            ),
        ),
        client.V1EnvVar(
            name="ABSENT",
            value_from=client.V1EnvVarSource(
                config_map_key_ref=client.V1ConfigMapKeySelector(
                    name="settings", key="nope", optional=True
                )
            ),
        ),
        client.V1EnvVar(name="SCRATCH", value="/scratch/work"),
    ]
    container = python_container(
        ENV_DUMP,
        args=["--listen=$(POD_IP)", "$(URL)", "/scratch", "$$(MODE)"],
        env=env,
        env_from=[
            client.V1EnvFromSource(
                prefix="CFG_", config_map_ref=client.V1ConfigMapEnvSource(name="settings")
            )
        ],
        volume_mounts=[client.V1VolumeMount(name="scratch", mount_path="/scratch")],
        working_dir="/scratch",
    )
    core.create_namespaced_pod(
        namespace,
        pod_manifest(
            "env",
            container,
            restart_policy="Never",
            automount_service_account_token=False,
            volumes=[client.V1Volume(name="scratch", empty_dir=client.V1EmptyDirVolumeSource())],
        ),
    )
    pod = finished_pod(core, namespace, "env")
    assert pod.status.phase == "Succeeded"
    dump = printed_json(pod_runner, namespace, "env")
    seen, ip = dump["env"], pod.status.pod_ip

    assert seen["POD_NAME"] == "env"
    assert seen["POD_NAMESPACE"] == namespace
    assert seen["POD_IP"] == ip
    assert seen["NODE"] == pod_runner.node_name
    assert seen["ACCOUNT"] == "default"
    assert seen["APP"] == "env"
    assert seen["URL"] == f"http://{ip}:8080/fast"
    assert seen["LITERAL"] == "$(POD_IP)"
    assert seen["UNKNOWN"] == "$(NOT_DEFINED)"
    assert (seen["MODE"], seen["TOKEN"]) == ("fast", "s3cret")
    assert (seen["CFG_MODE"], seen["CFG_LEVEL"]) == ("fast", "3")
    assert "ABSENT" not in seen
    assert seen["HOSTNAME"] == "env"
    # No service-account token is mounted, so no credentials at all; nothing leaks from
    # the runner's own environment either.
    assert "KUBECONFIG" not in seen
    assert "PYTEST_CURRENT_TEST" not in seen

    scratch = Path(seen["SCRATCH"]).parent
    assert seen["SCRATCH"] != "/scratch/work" and scratch.is_dir()
    assert dump["cwd"] == str(scratch)
    assert dump["argv"] == [f"--listen={ip}", f"http://{ip}:8080/fast", str(scratch), "$(MODE)"]


RBAC_PROBE = """
    import json
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    config.load_kube_config()
    namespace = config.list_kube_config_contexts()[1]["context"]["namespace"]
    core = client.CoreV1Api()
    outcome = {}
    for kind, call in (("pods", core.list_namespaced_pod), ("secrets", core.list_namespaced_secret)):
        try:
            call(namespace)
            outcome[kind] = "allowed"
        except ApiException as error:
            outcome[kind] = error.status
    print(json.dumps(outcome))
"""


def test_service_account_token_makes_rbac_apply(
    pod_runner: PodRunner, api_client: client.ApiClient, namespace: str
) -> None:
    core, rbac = client.CoreV1Api(api_client), client.RbacAuthorizationV1Api(api_client)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader"))
    )
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="pod-reader"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="reader"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)
            ],
        ),
    )
    core.create_namespaced_pod(
        namespace,
        pod_manifest(
            "reader",
            python_container(RBAC_PROBE),
            restart_policy="Never",
            service_account_name="reader",
        ),
    )
    pod = finished_pod(core, namespace, "reader")
    assert pod.status.phase == "Succeeded", pod_runner.log_path(
        namespace, "reader", "main"
    ).read_text()
    assert printed_json(pod_runner, namespace, "reader") == {"pods": "allowed", "secrets": 403}


def test_restart_policies_decide_restarts_and_phase(
    pod_runner: PodRunner, api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod(
        namespace,
        pod_manifest("fails", python_container("raise SystemExit(3)"), restart_policy="Never"),
    )
    # The emptyDir outlives restarts, so the second attempt finds the first one's mark.
    second_try_succeeds = """
        import os, pathlib
        mark = pathlib.Path(os.environ["SCRATCH"]) / "tried"
        if not mark.exists():
            mark.touch()
            raise SystemExit(1)
    """
    core.create_namespaced_pod(
        namespace,
        pod_manifest(
            "retries",
            python_container(
                second_try_succeeds,
                env=[client.V1EnvVar(name="SCRATCH", value="/scratch")],
                volume_mounts=[client.V1VolumeMount(name="scratch", mount_path="/scratch")],
            ),
            restart_policy="OnFailure",
            volumes=[client.V1Volume(name="scratch", empty_dir=client.V1EmptyDirVolumeSource())],
        ),
    )
    core.create_namespaced_pod(
        namespace,
        pod_manifest("always", python_container("import time; time.sleep(3600)")),
    )

    failed = finished_pod(core, namespace, "fails")
    assert failed.status.phase == "Failed"
    (status,) = failed.status.container_statuses
    assert (status.state.terminated.exit_code, status.restart_count) == (3, 0)

    retried = finished_pod(core, namespace, "retries")
    assert retried.status.phase == "Succeeded"
    (status,) = retried.status.container_statuses
    assert (status.state.terminated.exit_code, status.restart_count) == (0, 1)
    assert status.last_state.terminated.exit_code == 1

    first = container_pid(running_pod(core, namespace, "always"))
    os.kill(first, signal.SIGKILL)

    def restarted() -> Any:
        pod: Any = core.read_namespaced_pod("always", namespace)
        statuses = pod.status.container_statuses or []
        return (
            pod
            if statuses and statuses[0].restart_count == 1 and statuses[0].state.running
            else None
        )

    pod = eventually(restarted, "the killed container is restarted")
    assert {"Scheduled", "Started", "BackOff"} <= event_reasons(core, namespace, "always")
    assert container_pid(pod) != first and process_alive(container_pid(pod))
    assert pod.status.container_statuses[0].last_state.terminated.exit_code == 128 + signal.SIGKILL


def test_stopping_the_runner_leaves_no_process_behind(
    control_plane: controlplane.ControlPlane,
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    core = client.CoreV1Api(api_client)
    node = "tars-stop-test"
    spawner = """
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        time.sleep(3600)
    """
    with PodRunner(control_plane.kubeconfig, tmp_path, node_name=node) as runner:
        for name in ("one", "two"):
            core.create_namespaced_pod(
                namespace,
                pod_manifest(
                    name,
                    python_container(spawner),
                    node_selector={"kubernetes.io/hostname": node},
                    automount_service_account_token=False,
                ),
            )
        pods = [running_pod(core, namespace, name) for name in ("one", "two")]
        assert {pod.spec.node_name for pod in pods} == {node}
        leaders = [container_pid(pod) for pod in pods]
        family = eventually(
            lambda: (
                [
                    pid
                    for leader in leaders
                    for pid in [leader, *(c.pid for c in psutil.Process(leader).children())]
                ]
                if all(psutil.Process(leader).children() for leader in leaders)
                else None
            ),
            "every container has started its child",
        )
        assert sorted(runner.all_pids()) == sorted(leaders)
    assert [pid for pid in family if process_alive(pid)] == []
    # Nothing finalizes pods of a stopped node; remove them and the node by force.
    for name in ("one", "two"):
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    core.delete_node(node)


TOGGLED_HEALTH = """
    import http.server, os
    healthy = False
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if healthy else 503)
            self.end_headers()
        def do_POST(self):
            global healthy
            healthy = self.path == "/healthy"
            self.send_response(204)
            self.end_headers()
    http.server.HTTPServer((os.environ["POD_IP"], 8080), Handler).serve_forever()
"""


def test_readiness_follows_the_probe(
    pod_runner: PodRunner, api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    container = python_container(
        TOGGLED_HEALTH,
        env=[
            client.V1EnvVar(
                name="POD_IP",
                value_from=client.V1EnvVarSource(
                    field_ref=client.V1ObjectFieldSelector(field_path="status.podIP")
                ),
            )
        ],
        readiness_probe=client.V1Probe(
            http_get=client.V1HTTPGetAction(path="/", port=8080),
            period_seconds=1,
            failure_threshold=1,
        ),
    )
    core.create_namespaced_pod(namespace, pod_manifest("toggled", container))
    pod = running_pod(core, namespace, "toggled")
    url = f"http://{pod.status.pod_ip}:8080"

    def ready_is(expected: str) -> Callable[[], bool]:
        def check() -> bool:
            pod: Any = core.read_namespaced_pod("toggled", namespace)
            conditions = pod.status.conditions or []
            return any(c.type == "Ready" and c.status == expected for c in conditions)

        return check

    assert ready_is("False")()

    def post(path: str) -> bool:
        try:
            with urllib.request.urlopen(urllib.request.Request(url + path, method="POST")):
                return True
        except OSError:
            return False  # not listening yet

    eventually(partial(post, "/healthy"), "the pod accepts requests")
    eventually(ready_is("True"), "the pod turns Ready once its probe passes")
    post("/sick")
    eventually(ready_is("False"), "the pod turns unready once its probe fails")


def test_what_cannot_run_here_is_reported_on_the_pod(
    pod_runner: PodRunner, api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod(
        namespace,
        pod_manifest("no-command", client.V1Container(name="main", image="python:3.11")),
    )
    nfs = client.V1Volume(
        name="data", nfs=client.V1NFSVolumeSource(server="nfs.example", path="/export")
    )
    core.create_namespaced_pod(
        namespace,
        pod_manifest(
            "nfs",
            python_container(
                "pass", volume_mounts=[client.V1VolumeMount(name="data", mount_path="/data")]
            ),
            volumes=[nfs],
        ),
    )
    missing_key = client.V1EnvVar(
        name="MODE",
        value_from=client.V1EnvVarSource(
            config_map_key_ref=client.V1ConfigMapKeySelector(name="later", key="MODE")
        ),
    )
    core.create_namespaced_pod(
        namespace,
        pod_manifest(
            "later",
            python_container("import os; print(os.environ['MODE'])", env=[missing_key]),
            restart_policy="Never",
        ),
    )

    def waiting(name: str) -> Callable[[], Any]:
        def check() -> Any:
            pod: Any = core.read_namespaced_pod(name, namespace)
            statuses = pod.status.container_statuses or []
            return statuses and statuses[0].state.waiting and statuses[0].state.waiting.message

        return check

    for name, reason in (
        ("no-command", "container has no command"),
        ("nfs", "volume 'data': this volume type is not supported"),
        ("later", 'configmap "later" not found'),
    ):
        state = eventually(waiting(name), f"{name} reports why it waits")
        assert reason in state
        assert "Failed" in event_reasons(core, namespace, name)

    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="later"), data={"MODE": "ok"}),
    )
    assert finished_pod(core, namespace, "later").status.phase == "Succeeded"
    assert pod_runner.log_path(namespace, "later", "main").read_text() == "ok\n"


def test_a_claim_bound_to_a_host_path_volume_is_that_directory(
    pod_runner: PodRunner, api_client: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(api_client)
    volume_name = f"data-{namespace}"
    core.create_persistent_volume(
        client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(name=volume_name),
            spec=client.V1PersistentVolumeSpec(
                capacity={"storage": "1Gi"},
                access_modes=["ReadWriteOnce"],
                host_path=client.V1HostPathVolumeSource(path=str(tmp_path)),
                claim_ref=client.V1ObjectReference(namespace=namespace, name="data"),
            ),
        )
    )
    try:
        core.create_namespaced_persistent_volume_claim(
            namespace,
            client.V1PersistentVolumeClaim(
                metadata=client.V1ObjectMeta(name="data"),
                spec=client.V1PersistentVolumeClaimSpec(
                    access_modes=["ReadWriteOnce"],
                    resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
                    storage_class_name="",
                    volume_name=volume_name,
                ),
            ),
        )
        writer = python_container(
            "import pathlib, sys; pathlib.Path(sys.argv[1], 'note').write_text('kept')",
            args=["/data"],
            volume_mounts=[client.V1VolumeMount(name="data", mount_path="/data")],
        )
        claim = client.V1Volume(
            name="data",
            persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name="data"),
        )
        core.create_namespaced_pod(
            namespace, pod_manifest("writer", writer, restart_policy="Never", volumes=[claim])
        )
        assert finished_pod(core, namespace, "writer").status.phase == "Succeeded"
        assert (tmp_path / "note").read_text() == "kept"
    finally:
        core.delete_persistent_volume(volume_name)


PODRUNNER_CLI = [sys.executable, "-m", "tests.harness.podrunner"]


def test_cli_refuses_a_broken_kubeconfig_in_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("clusters: [")
    result = subprocess.run(
        [*PODRUNNER_CLI, "--kubeconfig", str(broken), "--state-dir", str(tmp_path / "state")],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=SETTLE_SECONDS,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("podrunner: cannot start: ")
    assert result.stderr.count("\n") == 1


def test_cli_runs_pods_until_terminated(
    control_plane: controlplane.ControlPlane,
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    core = client.CoreV1Api(api_client)
    node = "tars-cli-test"
    cli = subprocess.Popen(
        [
            *PODRUNNER_CLI,
            f"--kubeconfig={control_plane.kubeconfig}",
            f"--node-name={node}",
            f"--state-dir={tmp_path}",
        ],
        cwd=REPOSITORY,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        core.create_namespaced_pod(
            namespace,
            pod_manifest(
                "sleeper",
                python_container("import time; time.sleep(3600)"),
                node_selector={"kubernetes.io/hostname": node},
            ),
        )
        pid = container_pid(running_pod(core, namespace, "sleeper"))
        assert process_alive(pid)
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(SETTLE_SECONDS) == 0
        assert not process_alive(pid)
    finally:
        cli.kill()
        cli.wait()
        core.delete_namespaced_pod("sleeper", namespace, grace_period_seconds=0)
        core.delete_node(node)


def test_init_containers_run_to_completion_first(
    pod_runner: PodRunner, api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    shared = [client.V1VolumeMount(name="shared", mount_path="/shared")]
    prepare = client.V1Container(
        name="prepare",
        image="python:3.11",
        command=["python", "-c", "import sys; open(sys.argv[1], 'w').write('prepared')"],
        args=["/shared/state"],
        volume_mounts=shared,
    )
    main = python_container(
        "import sys; print(open(sys.argv[1]).read())", args=["/shared/state"], volume_mounts=shared
    )
    pod = pod_manifest(
        "staged",
        main,
        restart_policy="Never",
        init_containers=[prepare],
        volumes=[client.V1Volume(name="shared", empty_dir=client.V1EmptyDirVolumeSource())],
    )
    core.create_namespaced_pod(namespace, pod)
    finished = finished_pod(core, namespace, "staged")
    assert finished.status.phase == "Succeeded"
    (init_status,) = finished.status.init_container_statuses
    assert init_status.state.terminated.reason == "Completed"
    assert pod_runner.log_path(namespace, "staged", "main").read_text() == "prepared\n"
