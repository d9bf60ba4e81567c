"""`tarscli replica ...` against the real API server, checking the real objects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tars_api.meta import Condition
from tars_api.names import REPLICA_PORT, REPLICA_PORT_NAME

from tests.harness.cli import Cli, get_object, invoke, patch_status

pytestmark = pytest.mark.usefixtures("tars_crds")

PLURAL = "tarsreplicas"


def test_replica_lifecycle(cli: Cli, api_client: client.ApiClient, namespace: str) -> None:
    created = cli(
        "replica",
        "create",
        "gen",
        "--role",
        "generator",
        "--replicas",
        "2",
        "--engine",
        "ollama",
        "--model",
        "qwen2",
    )
    assert created.exit_code == 0, created.output
    assert created.stdout.strip() == "tarsreplica/gen created (role generator, 2 replica(s))"
    spec = get_object(api_client, namespace, PLURAL, "gen")["spec"]
    assert spec["role"] == "generator" and spec["replicas"] == 2
    assert spec["engine"] == "ollama" and spec["model"] == "qwen2" and spec["suspend"] is False

    patch_status(
        api_client,
        namespace,
        PLURAL,
        "gen",
        {
            "phase": "Ready",
            "readyReplicas": 2,
            "endpoint": "http://gen.ns.svc:8080",
            "conditions": [
                Condition.make("Ready", True, "AllReplicasReady", "2/2 pods ready").to_dict()
            ],
        },
    )
    listed = cli("replica", "list")
    assert listed.exit_code == 0, listed.output
    header, row = listed.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "ROLE", "DESIRED", "READY", "PHASE", "ENDPOINT", "AGE"]
    assert row.split()[:6] == ["gen", "generator", "2", "2", "Ready", "http://gen.ns.svc:8080"]
    as_json = json.loads(cli("replica", "list", "-o", "json").stdout)
    assert as_json["kind"] == "TarsReplicaList"
    assert [item["metadata"]["name"] for item in as_json["items"]] == ["gen"]

    stopped = cli("replica", "stop", "gen")
    assert stopped.exit_code == 0 and "suspend=true" in stopped.stdout
    assert get_object(api_client, namespace, PLURAL, "gen")["spec"]["suspend"] is True
    started = cli("replica", "start", "gen")
    assert started.exit_code == 0 and "suspend=false" in started.stdout
    assert get_object(api_client, namespace, PLURAL, "gen")["spec"]["suspend"] is False

    shown = cli("replica", "status", "gen")
    assert shown.exit_code == 0, shown.output
    for expected in (
        "generator",
        "Ready",
        "http://gen.ns.svc:8080",
        "AllReplicasReady",
        "2/2 pods ready",
    ):
        assert expected in shown.stdout
    as_yaml = yaml.safe_load(cli("replica", "status", "gen", "-o", "yaml").stdout)
    assert as_yaml["status"]["readyReplicas"] == 2 and as_yaml["metadata"]["namespace"] == namespace

    removed = cli("replica", "remove", "gen")
    assert removed.exit_code == 0 and removed.stdout.strip() == "tarsreplica/gen removed"
    with pytest.raises(ApiException) as gone:
        get_object(api_client, namespace, PLURAL, "gen")
    assert gone.value.status == 404


def test_empty_namespace_lists_nothing(cli: Cli, namespace: str) -> None:
    listed = cli("replica", "list")
    assert listed.exit_code == 0
    assert f'No TarsReplicas in namespace "{namespace}"' in listed.stdout
    assert json.loads(cli("replica", "list", "-o", "json").stdout)["items"] == []


@pytest.mark.parametrize("command", ["status", "start", "stop", "remove"])
def test_missing_replica_is_one_line(cli: Cli, namespace: str, command: str) -> None:
    result = cli("replica", command, "nope")
    assert result.exit_code == 1
    assert result.stderr == f'error: TarsReplica "nope" not found in namespace "{namespace}"\n'


def test_existing_replica_is_not_overwritten(
    cli: Cli, api_client: client.ApiClient, namespace: str
) -> None:
    assert cli("replica", "create", "tester", "--role", "tester").exit_code == 0
    again = cli("replica", "create", "tester", "--role", "analyzer")
    assert again.exit_code == 1
    assert (
        again.stderr == f'error: TarsReplica "tester" already exists in namespace "{namespace}"\n'
    )
    assert get_object(api_client, namespace, PLURAL, "tester")["spec"]["role"] == "tester"


def test_invalid_replica_is_refused_by_the_api_server(cli: Cli) -> None:
    result = cli("replica", "create", "Not_A_Name", "--role", "tester")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        'error: the API server refused the object: TarsReplica.tars.dev "Not_A_Name" is invalid'
    )
    assert "metadata.name" in lines[0]


def test_invalid_option_values_are_one_line(cli: Cli) -> None:
    empty_model = cli("replica", "create", "gen", "--role", "generator", "--model", "")
    assert empty_model.exit_code == 1
    assert empty_model.stderr.startswith(
        "error: invalid TarsReplicaSpec: model: String should have at least 1 character"
    )
    assert len(empty_model.stderr.splitlines()) == 1
    unknown_role = cli("replica", "create", "gen", "--role", "painter")
    assert unknown_role.exit_code == 2 and "painter" in unknown_role.output


def test_rbac_refusal_is_one_line(
    cli: Cli, service_account_kubeconfig, api_client: client.ApiClient, namespace: str
) -> None:
    nobody = service_account_kubeconfig("nobody")
    listed = cli("replica", "list", kubeconfig=nobody)
    assert listed.exit_code == 1
    assert listed.stderr == (
        'error: forbidden: tarsreplicas.tars.dev is forbidden: User "system:serviceaccount:'
        f'{namespace}:nobody" cannot list resource "tarsreplicas" in API group "tars.dev" in the namespace "{namespace}"\n'
    )
    created = cli("replica", "create", "gen", "--role", "generator", kubeconfig=nobody)
    assert created.exit_code == 1 and created.stderr.startswith("error: forbidden: ")
    with pytest.raises(ApiException):
        get_object(api_client, namespace, PLURAL, "gen")


def test_namespace_defaults_to_the_contexts(
    kubeconfig: Path, api_client: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    with_namespace = json.loads(kubeconfig.read_text())
    with_namespace["contexts"][0]["context"]["namespace"] = namespace
    path = tmp_path / "namespaced.kubeconfig"
    path.write_text(json.dumps(with_namespace))
    created = invoke("replica", "create", "an", "--role", "analyzer", "--kubeconfig", str(path))
    assert created.exit_code == 0, created.output
    assert get_object(api_client, namespace, PLURAL, "an")["spec"]["role"] == "analyzer"
    assert "an" in invoke("replica", "list", "--kubeconfig", str(path)).stdout


def _ready_status(pods: int = 1) -> dict[str, object]:
    return {
        "phase": "Ready",
        "readyReplicas": pods,
        "conditions": [
            Condition.make("Ready", True, "AllReplicasReady", f"{pods}/{pods} pods ready").to_dict()
        ],
    }


def test_send_names_what_is_missing_before_any_replica_answers(
    cli: Cli, api_client: client.ApiClient, namespace: str
) -> None:
    """Every refusal here comes from the real API server; the replicas' own answers (a path
    they do not serve, an answer that is not JSON) are in tests/e2e/test_cluster_runs.py."""
    missing = cli("replica", "send", "nosuch", "/info")
    assert missing.exit_code == 1
    assert missing.stderr.strip() == (
        f'error: TarsReplica "nosuch" not found in namespace "{namespace}"'
    )
    no_role = cli("replica", "send", "analyzer", "/info")
    assert no_role.exit_code == 1
    assert no_role.stderr.strip() == (
        f'error: no TarsReplica serves role analyzer in namespace "{namespace}"; '
        'create them with "tarscli self-code setup"'
    )

    assert cli("replica", "create", "lint", "--role", "analyzer").exit_code == 0
    not_ready = cli("replica", "send", "analyzer", "/info")
    assert not_ready.exit_code == 1
    assert not_ready.stderr.startswith(
        'error: the analyzer replica "lint" has no ready pod to answer: '
    ), not_ready.stderr

    patch_status(api_client, namespace, PLURAL, "lint", _ready_status())
    # A Service without a selector has no endpoints: the proxy answers 503.
    client.CoreV1Api(api_client).create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="lint"),
            spec=client.V1ServiceSpec(
                ports=[client.V1ServicePort(name=REPLICA_PORT_NAME, port=REPLICA_PORT)]
            ),
        ),
    )
    no_endpoints = cli("replica", "send", "analyzer", "/info")
    assert no_endpoints.exit_code == 1
    assert no_endpoints.stderr.strip() == (
        'error: the analyzer replica "lint" has no ready pod to answer (no ready endpoint behind its Service)'
    )

    assert cli("replica", "create", "lint-2", "--role", "analyzer").exit_code == 0
    patch_status(api_client, namespace, PLURAL, "lint-2", _ready_status())
    ambiguous = cli("replica", "api", "analyzer")
    assert ambiguous.exit_code == 1
    assert ambiguous.stderr.strip() == (
        "error: 2 TarsReplicas serve role analyzer (lint, lint-2): name one of them"
    )


def test_send_refuses_data_that_is_not_json(cli: Cli, tmp_path: Path) -> None:
    inline = cli("replica", "send", "analyzer", "/v1/analyze", "--data", "{file:")
    assert inline.exit_code == 1
    assert inline.stderr.startswith("error: --data is not JSON: "), inline.stderr
    absent = tmp_path / "absent.json"
    from_file = cli("replica", "send", "analyzer", "/v1/analyze", "--data", f"@{absent}")
    assert from_file.exit_code == 1
    assert from_file.stderr.startswith(f"error: cannot read --data @{absent}: "), from_file.stderr
    assert len(from_file.stderr.splitlines()) == 1
