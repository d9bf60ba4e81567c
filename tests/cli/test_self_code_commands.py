"""`tarscli self-code setup|start|status|stop` against the real API server, checking the real objects."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from tars_api.meta import Condition, format_time, now
from tars_api.vocabulary import Role

from tests.harness.cli import (
    Cli,
    config_map_archive,
    get_object,
    list_objects,
    patch_status,
    tarscli_config_maps,
)

pytestmark = pytest.mark.usefixtures("tars_crds")

RUNS = "selfcodingruns"
REPLICAS = "tarsreplicas"
ROLES = [role.value for role in Role]


def ready_status(name: str) -> dict[str, object]:
    return {
        "phase": "Ready",
        "replicas": 1,
        "readyReplicas": 1,
        "endpoint": f"http://{name}:8080",
        "conditions": [
            Condition.make("Ready", True, "AllReplicasReady", "1/1 pods ready").to_dict()
        ],
    }


def tarscli_process(
    *args: str, kubeconfig: Path, namespace: str, cwd: Path | None = None
) -> subprocess.Popen[str]:
    """The installed `tarscli` console script, as a separate process."""
    tarscli = Path(sys.executable).with_name("tarscli")
    return subprocess.Popen(
        [str(tarscli), *args, "--kubeconfig", str(kubeconfig), "-n", namespace],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
    )


def wait_for_objects(
    api_client: client.ApiClient, namespace: str, plural: str, names: set[str]
) -> None:
    """Block until objects named `names` exist (a watch, bounded by the server-side timeout)."""
    seen: set[str] = set()
    stream = watch.Watch().stream(
        client.CustomObjectsApi(api_client).list_namespaced_custom_object,
        "tars.dev",
        "v1alpha1",
        namespace,
        plural,
        timeout_seconds=60,
    )
    for event in stream:
        seen.add(event["raw_object"]["metadata"]["name"])
        if names <= seen:
            return
    raise AssertionError(f"only {sorted(seen)} of {sorted(names)} appeared")


# --- setup -----------------------------------------------------------------------------


def test_setup_creates_the_four_roles_idempotently(
    cli: Cli, api_client: client.ApiClient, namespace: str
) -> None:
    first = cli("self-code", "setup", "--no-wait")
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines() == [f"tarsreplica/{role} created" for role in ROLES] + [
        f"{kind}/tars-coordinator created" for kind in ("serviceaccount", "role", "rolebinding")
    ]
    for role in ROLES:
        assert get_object(api_client, namespace, REPLICAS, role)["spec"]["role"] == role
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        "tars.dev", "v1alpha1", namespace, REPLICAS, "generator", {"spec": {"replicas": 3}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    second = cli("self-code", "setup", "--no-wait")
    assert second.exit_code == 0, second.output
    assert second.stdout.splitlines() == [
        f"tarsreplica/{role} already exists (left unchanged)" for role in ROLES
    ] + [
        f"{kind}/tars-coordinator already exists (left unchanged)"
        for kind in ("serviceaccount", "role", "rolebinding")
    ]
    assert get_object(api_client, namespace, REPLICAS, "generator")["spec"]["replicas"] == 3


def test_setup_waits_for_every_replica_to_be_ready(
    kubeconfig: Path, api_client: client.ApiClient, namespace: str
) -> None:
    setup = tarscli_process(
        "self-code", "setup", "--timeout", "120", kubeconfig=kubeconfig, namespace=namespace
    )
    try:
        wait_for_objects(api_client, namespace, REPLICAS, set(ROLES))
        for role in ROLES:
            assert setup.poll() is None, "setup returned before every replica was Ready"
            patch_status(api_client, namespace, REPLICAS, role, ready_status(role))
        stdout, stderr = setup.communicate(timeout=120)
    finally:
        setup.kill()
    assert setup.returncode == 0, stderr
    assert f'All 4 role replicas are Ready in namespace "{namespace}".' in stdout
    assert "Traceback" not in stderr


def test_setup_timeout_names_the_replicas_not_ready(
    cli: Cli, api_client: client.ApiClient, namespace: str
) -> None:
    assert cli("self-code", "setup", "--no-wait").exit_code == 0
    for role in ("analyzer", "generator"):
        patch_status(api_client, namespace, REPLICAS, role, ready_status(role))
    patch_status(
        api_client,
        namespace,
        REPLICAS,
        "tester",
        {
            "phase": "Pending",
            "readyReplicas": 0,
            "conditions": [
                Condition.make("Ready", False, "PodsNotReady", "0/1 pods ready").to_dict()
            ],
        },
    )
    result = cli("self-code", "setup", "--timeout", "2")
    assert result.exit_code == 1
    assert result.stderr == (
        "error: timed out after 2s waiting for replicas to be Ready: "
        "tester (Pending: PodsNotReady (0/1 pods ready)), coordinator (no status yet: is the operator running?)\n"
    )
    patch_status(api_client, namespace, REPLICAS, "tester", ready_status("tester"))
    patch_status(api_client, namespace, REPLICAS, "coordinator", ready_status("coordinator"))
    ready = cli("self-code", "setup", "--timeout", "30")
    assert ready.exit_code == 0, ready.output
    assert "All 4 role replicas are Ready" in ready.stdout


# --- start -----------------------------------------------------------------------------


def start_run(cli: Cli, *args: str) -> str:
    result = cli("self-code", "start", *args)
    assert result.exit_code == 0, result.output
    name = result.stdout.strip()
    assert "\n" not in name
    return name


def test_start_uploads_the_project_and_creates_a_run(
    cli: Cli, project: Path, api_client: client.ApiClient, namespace: str
) -> None:
    (project / "notes.txt").write_text("untracked, not ignored\n")
    result = cli(
        "self-code", "start", "-t", "src", "--target", "tests", "-a", "--max-files", "5",
        "--test-command", "python -m pytest -q", "--engine", "static",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    name = result.stdout.strip()
    assert name.startswith("demo-project-")
    assert f"tarscli self-code status {name} --watch" in result.stderr

    run = get_object(api_client, namespace, RUNS, name)
    spec = run["spec"]
    assert spec["targets"] == ["src", "tests"]
    assert spec["autoApply"] is True and spec["maxFiles"] == 5 and spec["engine"] == "static"
    assert spec["testCommand"] == ["python", "-m", "pytest", "-q"]
    assert spec["sandbox"] == "auto" and spec["testNetwork"] is False and spec["testEnv"] == []
    assert spec["learning"] is True
    upload = spec["source"]["upload"]
    config_map = client.CoreV1Api(api_client).read_namespaced_config_map(
        upload["configMap"], namespace
    )
    metadata = config_map.metadata
    assert metadata is not None and metadata.owner_references and metadata.labels
    assert metadata.owner_references[0].uid == run["metadata"]["uid"]
    assert metadata.owner_references[0].kind == "SelfCodingRun"
    assert metadata.labels["tars.dev/run"] == name
    archive = config_map_archive(api_client, namespace, upload["configMap"], upload["key"])
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as packed:
        assert sorted(packed.getnames()) == [
            "README.md", "notes.txt", "src/calc/__init__.py", "src/calc/ops.py", "tests/test_ops.py",
        ]  # fmt: skip

    # Deleting the run removes its upload (the garbage collector follows the owner reference).
    core = client.CoreV1Api(api_client)
    selector = f"metadata.name={upload['configMap']}"
    listed = core.list_namespaced_config_map(namespace, field_selector=selector).metadata
    assert listed is not None
    before = listed.resource_version
    client.CustomObjectsApi(api_client).delete_namespaced_custom_object(
        "tars.dev", "v1alpha1", namespace, RUNS, name
    )
    for event in watch.Watch().stream(
        core.list_namespaced_config_map,
        namespace,
        field_selector=selector,
        resource_version=before,
        timeout_seconds=60,
    ):
        if event["type"] == "DELETED":
            break
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_config_map(upload["configMap"], namespace)
    assert gone.value.status == 404


def test_start_with_no_learning_keeps_the_run_out_of_learning(
    cli: Cli, project: Path, api_client: client.ApiClient, namespace: str
) -> None:
    result = cli("self-code", "start", "-t", "src", "--no-learning")
    assert result.exit_code == 0, result.output
    name = result.stdout.strip()
    assert get_object(api_client, namespace, RUNS, name)["spec"]["learning"] is False
    shown = cli("self-code", "status", name)
    assert (
        "Learning" in shown.stdout and "off (nothing read from the learning store" in shown.stdout
    )


def test_start_from_a_subdirectory_uses_the_project_root(
    cli: Cli,
    project: Path,
    api_client: client.ApiClient,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(project / "src")
    name = start_run(cli, "-t", "calc")
    assert get_object(api_client, namespace, RUNS, name)["spec"]["targets"] == ["src/calc"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("missing", "error: target 'missing' does not exist"),
        ("README.md", "error: target 'README.md' is not a directory"),
        (
            "../elsewhere",
            "error: target '../elsewhere' contains '..': targets must stay inside the project {root}",
        ),
        ("{outside}", "error: target '{outside}' is outside the project {root}"),
    ],
)
def test_bad_targets_create_nothing(
    cli: Cli, project: Path, api_client: client.ApiClient, namespace: str, target: str, message: str
) -> None:
    outside = project.parent / "elsewhere"
    outside.mkdir()
    values = {"root": str(project.resolve()), "outside": str(outside)}
    result = cli("self-code", "start", "-t", target.format(**values))
    assert result.exit_code == 1
    assert result.stderr == message.format(**values) + "\n"
    assert list_objects(api_client, namespace, RUNS) == []
    assert tarscli_config_maps(api_client, namespace) == []


def test_start_refuses_a_project_too_large_to_upload(
    cli: Cli, project: Path, api_client: client.ApiClient, namespace: str
) -> None:
    (project / "src" / "blob.bin").write_bytes(os.urandom(1100 * 1024))
    result = cli("self-code", "start", "-t", "src")
    assert result.exit_code == 1
    assert "above the 1,040,384 bytes a ConfigMap upload can hold" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert tarscli_config_maps(api_client, namespace) == []


def test_start_needs_a_target_and_a_parsable_test_command(cli: Cli, project: Path) -> None:
    missing = cli("self-code", "start")
    assert missing.exit_code == 2 and "--target" in missing.output
    unbalanced = cli("self-code", "start", "-t", "src", "--test-command", "pytest 'unbalanced")
    assert unbalanced.exit_code == 1
    assert unbalanced.stderr.startswith(
        'error: --test-command "pytest \'unbalanced" cannot be parsed'
    )
    bad_env = cli("self-code", "start", "-t", "src", "--test-env", "NOT-A-NAME")
    assert bad_env.exit_code == 1
    assert bad_env.stderr == "error: --test-env 'NOT-A-NAME' is not a variable name\n"


def test_start_passes_the_sandbox_options_to_the_run(
    cli: Cli, project: Path, api_client: client.ApiClient, namespace: str
) -> None:
    name = start_run(
        cli, "-t", "src", "--sandbox", "required", "--test-env", "PIP_INDEX_URL",
        "--test-env", "LANG", "--test-network",
    )  # fmt: skip
    spec = get_object(api_client, namespace, RUNS, name)["spec"]
    assert spec["sandbox"] == "required" and spec["testNetwork"] is True
    assert spec["testEnv"] == ["PIP_INDEX_URL", "LANG"]
    shown = cli("self-code", "status", name)
    assert "required, network allowed (no test has run yet)" in shown.stdout


def test_start_with_a_test_image_names_it_in_the_run(
    cli: Cli, project: Path, api_client: client.ApiClient, namespace: str
) -> None:
    name = start_run(cli, "-t", "src", "--test-image", "localhost/project-tests:1")
    spec = get_object(api_client, namespace, RUNS, name)["spec"]
    assert spec["testEnvironment"]["image"] == "localhost/project-tests:1"
    assert spec["testEnvironment"]["extras"] == []
    shown = cli("self-code", "status", name)
    assert "image localhost/project-tests:1 (no test has run yet)" in shown.stdout

    malformed = cli("self-code", "start", "-t", "src", "--test-image", "Project Tests")
    assert malformed.exit_code == 1
    assert malformed.stderr == (
        "error: --test-image must be an image reference such as "
        "registry.example.org/project-tests:1\n"
    )
    with_install = cli("self-code", "start", "-t", "src", "--test-image", "p:1", "--install")
    assert with_install.exit_code == 1
    assert with_install.stderr.startswith("error: --test-image cannot go with --install")


# --- status and stop --------------------------------------------------------------------


def test_status_of_a_new_run_and_of_the_latest(cli: Cli, project: Path, namespace: str) -> None:
    empty = cli("self-code", "status")
    assert empty.exit_code == 1
    assert empty.stderr == (
        f'error: no SelfCodingRun in namespace "{namespace}"; start one with "tarscli self-code start -t DIR"\n'
    )
    first = start_run(cli, "-t", "src")
    second = start_run(cli, "-t", "tests")
    latest = cli("self-code", "status")
    assert latest.exit_code == 0, latest.output
    assert second in latest.stdout and first not in latest.stdout
    assert "no status yet: is the operator running?" in latest.stdout
    named = json.loads(cli("self-code", "status", first, "-o", "json").stdout)
    assert named["metadata"]["name"] == first and named["spec"]["targets"] == ["src"]
    as_yaml = yaml.safe_load(cli("self-code", "status", "-o", "yaml").stdout)
    assert as_yaml["metadata"]["name"] == second


def test_status_shows_why_a_run_waits_and_what_it_did(
    cli: Cli, project: Path, api_client: client.ApiClient, namespace: str
) -> None:
    name = start_run(cli, "-t", "src")
    waiting = Condition.make(
        "ReplicasReady", False, "CoordinatorNotReady", "no coordinator replica is ready"
    )
    patch_status(
        api_client, namespace, RUNS, name, {"phase": "Pending", "conditions": [waiting.to_dict()]}
    )
    pending = cli("self-code", "status", name)
    assert pending.exit_code == 0, pending.output
    for expected in (
        "Pending",
        "ReplicasReady",
        "CoordinatorNotReady",
        "no coordinator replica is ready",
    ):
        assert expected in pending.stdout

    started = now()
    patch_status(
        api_client,
        namespace,
        RUNS,
        name,
        {
            "phase": "Running",
            "stage": "Testing",
            "currentFile": "src/calc/ops.py",
            "progress": "1/2",
            "startTime": format_time(started),
            "statistics": {"filesTotal": 2, "filesProcessed": 1, "improvementsProposed": 3, "improvementsAccepted": 2, "testRuns": 1},
            "latestResults": [{"path": "src/calc/__init__.py", "outcome": "Accepted", "attempts": 1, "message": "removed unused import"}],
        },
    )  # fmt: skip
    running = cli("self-code", "status", name)
    assert running.exit_code == 0, running.output
    out = running.stdout
    for expected in (
        "Running",
        "Testing",
        "src/calc/ops.py",
        "1/2",
        started.strftime("%Y-%m-%d %H:%M:%SZ"),
        "removed unused import",
        "Accepted",
    ):
        assert expected in out
    statistics_header = next(line for line in out.splitlines() if line.startswith("FILES"))
    statistics_row = out.splitlines()[out.splitlines().index(statistics_header) + 1]
    assert statistics_header.split() == [
        "FILES",
        "PROCESSED",
        "FAILED",
        "PROPOSED",
        "ACCEPTED",
        "APPLIED",
        "TEST",
        "RUNS",
    ]
    assert statistics_row.split() == ["2", "1", "0", "3", "2", "0", "1"]


def test_status_watch_follows_the_run_until_it_ends(
    kubeconfig: Path, project: Path, cli: Cli, api_client: client.ApiClient, namespace: str
) -> None:
    name = start_run(cli, "-t", "src")
    watcher = tarscli_process(
        "self-code", "status", name, "--watch", kubeconfig=kubeconfig, namespace=namespace
    )
    try:
        assert watcher.stdout is not None
        assert "waiting for the operator" in watcher.stdout.readline()
        patch_status(api_client, namespace, RUNS, name, {"phase": "Running", "stage": "Analyzing", "currentFile": "src/calc/ops.py", "statistics": {"filesTotal": 2}})  # fmt: skip
        assert "Running · Analyzing · src/calc/ops.py" in watcher.stdout.readline()
        patch_status(api_client, namespace, RUNS, name, {"phase": "Succeeded", "stage": "Done", "currentFile": None, "statistics": {"filesTotal": 2, "filesProcessed": 2, "improvementsApplied": 1}})  # fmt: skip
        stdout, stderr = watcher.communicate(timeout=60)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, stderr
    assert "Succeeded · Done" in stdout
    assert "Statistics" in stdout and "Traceback" not in stderr


def test_status_watch_as_json_prints_each_version(
    kubeconfig: Path, project: Path, cli: Cli, api_client: client.ApiClient, namespace: str
) -> None:
    name = start_run(cli, "-t", "src")
    patch_status(api_client, namespace, RUNS, name, {"phase": "Stopped", "stage": "Done"})
    watcher = tarscli_process(
        "self-code", "status", name, "-w", "-o", "json", kubeconfig=kubeconfig, namespace=namespace
    )
    stdout, stderr = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, stderr
    assert json.loads(stdout)["status"]["phase"] == "Stopped"


def test_stop_sets_spec_stop(
    cli: Cli, project: Path, api_client: client.ApiClient, namespace: str
) -> None:
    name = start_run(cli, "-t", "src")
    stopped = cli("self-code", "stop")
    assert stopped.exit_code == 0, stopped.output
    assert (
        stopped.stdout
        == f"selfcodingrun/{name}: stop requested (the operator has not picked it up yet)\n"
    )
    assert get_object(api_client, namespace, RUNS, name)["spec"]["stop"] is True
    again = cli("self-code", "stop", name)
    assert again.exit_code == 0 and "stop was already requested" in again.stdout
    assert "(stop requested)" in cli("self-code", "status", name).stdout

    ended = start_run(cli, "-t", "src")
    patch_status(api_client, namespace, RUNS, ended, {"phase": "Succeeded", "stage": "Done"})
    late = cli("self-code", "stop", ended)
    assert late.exit_code == 0
    assert (
        late.stdout
        == f"selfcodingrun/{ended} has already ended (phase Succeeded); nothing to stop\n"
    )
    assert get_object(api_client, namespace, RUNS, ended)["spec"]["stop"] is False


@pytest.mark.parametrize("command", ["status", "stop"])
def test_missing_run_is_one_line(cli: Cli, namespace: str, command: str) -> None:
    result = cli("self-code", command, "nope")
    assert result.exit_code == 1
    assert result.stderr == f'error: SelfCodingRun "nope" not found in namespace "{namespace}"\n'


# --- access and connectivity --------------------------------------------------------------


def test_rbac_refusal_creates_nothing(
    cli: Cli,
    project: Path,
    service_account_kubeconfig: Callable[[str], Path],
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    nobody = service_account_kubeconfig("nobody")
    started = cli("self-code", "start", "-t", "src", kubeconfig=nobody)
    assert started.exit_code == 1
    assert started.stderr.startswith(
        f'error: forbidden: configmaps is forbidden: User "system:serviceaccount:{namespace}:nobody" cannot create resource "configmaps"'
    )
    assert len(started.stderr.splitlines()) == 1
    setup = cli("self-code", "setup", "--no-wait", kubeconfig=nobody)
    assert setup.exit_code == 1 and setup.stderr.startswith(
        "error: forbidden: tarsreplicas.tars.dev is forbidden"
    )
    status = cli("self-code", "status", kubeconfig=nobody)
    assert status.exit_code == 1 and 'cannot list resource "selfcodingruns"' in status.stderr
    assert list_objects(api_client, namespace, REPLICAS) == []


def test_a_namespace_that_does_not_exist(cli: Cli, project: Path, kubeconfig: Path) -> None:
    from tests.harness.cli import invoke

    result = invoke(
        "self-code",
        "start",
        "-t",
        "src",
        "--kubeconfig",
        str(kubeconfig),
        "-n",
        "no-such-namespace",
    )
    assert result.exit_code == 1
    assert result.stderr == 'error: not found: namespaces "no-such-namespace" not found\n'


def test_ctrl_c_leaves_the_watch_and_the_run(
    kubeconfig: Path, project: Path, cli: Cli, api_client: client.ApiClient, namespace: str
) -> None:
    name = start_run(cli, "-t", "src")
    watcher = tarscli_process(
        "self-code", "status", name, "--watch", kubeconfig=kubeconfig, namespace=namespace
    )
    try:
        assert watcher.stdout is not None
        assert "waiting for the operator" in watcher.stdout.readline()
        watcher.send_signal(signal.SIGINT)
        _, stderr = watcher.communicate(timeout=60)
    finally:
        watcher.kill()
    assert watcher.returncode == 130
    assert stderr == (
        f'Stopped watching; the run goes on ("tarscli self-code stop {name}" stops it).\n'
    )
    assert get_object(api_client, namespace, RUNS, name)["spec"]["stop"] is False


def test_a_refused_run_leaves_no_upload_behind(
    cli: Cli,
    project: Path,
    service_account_kubeconfig: Callable[[str], Path],
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    uploader = service_account_kubeconfig("uploader")
    rbac = client.RbacAuthorizationV1Api(api_client)
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="configmaps-only"),
            rules=[
                client.V1PolicyRule(
                    api_groups=[""], resources=["configmaps"], verbs=["create", "delete"]
                )
            ],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="configmaps-only"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="configmaps-only"
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="uploader", namespace=namespace)
            ],
        ),
    )
    result = cli("self-code", "start", "-t", "src", kubeconfig=uploader)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        'error: forbidden: selfcodingruns.tars.dev is forbidden: User "system:serviceaccount:'
        f'{namespace}:uploader" cannot create resource "selfcodingruns"'
    )
    assert tarscli_config_maps(api_client, namespace) == []
