"""Rendering helpers and error descriptions: pure functions."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from tars_api.replica import TarsReplica
from tars_api.vocabulary import Role
from tarscli import output
from tarscli.api_client import ApiClient, ApiError, Endpoint, Unreachable
from tarscli.cluster_ops import name_prefix
from tarscli.errors import CliError, describe_failure, one_line

from tests.harness.cli import invoke


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0s"),
        (59, "59s"),
        (60, "1m"),
        (119 * 60, "119m"),
        (2 * 3600, "2h"),
        (47 * 3600, "47h"),
        (3 * 86400, "3d"),
    ],
)
def test_age_reads_like_kubectl(seconds: int, expected: str) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert output.age(now - timedelta(seconds=seconds), now=now) == expected


def test_documents_are_plain_json_and_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    replicas = [TarsReplica.build(role.value, role) for role in (Role.analyzer, Role.tester)]
    data = output.document(replicas, TarsReplica)
    output.print_document(data, output.OutputFormat.json)
    printed = json.loads(capsys.readouterr().out)
    assert printed["kind"] == "TarsReplicaList"
    assert [item["spec"]["role"] for item in printed["items"]] == ["analyzer", "tester"]
    output.print_document(output.document(replicas[0], TarsReplica), output.OutputFormat.yaml)
    single = yaml.safe_load(capsys.readouterr().out)
    assert single["kind"] == "TarsReplica" and single["metadata"] == {"name": "analyzer"}


def test_api_errors_become_one_line_with_the_servers_words() -> None:
    status = {
        "kind": "Status",
        "message": 'SelfCodingRun.tars.dev "x" is invalid: spec.targets[0]:\n Invalid value: "/abs"',
        "reason": "Invalid",
    }
    error = ApiError(422, "Unprocessable Entity", json.dumps(status))
    message = describe_failure(error)
    assert message is not None and "\n" not in one_line(message)
    assert (
        message.startswith("the API server refused the object: ") and "spec.targets[0]" in message
    )
    plain = ApiError(404, "Not Found", "404 page not found")
    assert describe_failure(plain) == "not found: 404 page not found"


def test_connection_failures_name_the_server() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = ApiClient(Endpoint(server=f"http://127.0.0.1:{port}", namespace=None))
    with pytest.raises(Unreachable) as raised:
        client.request("GET", "/version")
    assert describe_failure(raised.value) == (
        f"cannot reach the Kubernetes API at http://127.0.0.1:{port}: [Errno 111] Connection refused"
    )


def test_bugs_are_not_disguised() -> None:
    assert describe_failure(KeyError("x")) is None
    assert describe_failure(CliError("target 'x' does not exist")) == "target 'x' does not exist"


@pytest.mark.parametrize(
    ("directory", "prefix"),
    [
        ("ledgerly", "ledgerly-"),
        ("My_Project.v2", "my-project-v2-"),
        ("--weird--", "weird-"),
        ("日本", "run-"),
        ("x" * 80, "x" * 40 + "-"),
    ],
)
def test_run_names_come_from_the_project_directory(directory: str, prefix: str) -> None:
    assert name_prefix(Path("/somewhere") / directory) == prefix


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"tarscli {version('tars-selfcoding')}\n"


def test_summary_values_are_shown_as_written_not_as_markup() -> None:
    console = Console(width=120, record=True)
    console.print(output.summary([("Test environment", "pip install .[test] pytest [bold]x")]))
    assert "pip install .[test] pytest [bold]x" in console.export_text()
