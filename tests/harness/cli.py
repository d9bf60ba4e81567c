"""Helpers for driving `tarscli` against the real control plane and reading the real objects."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol, cast

from kubernetes import client
from tars_api.meta import GROUP, VERSION
from tarscli.app import app
from typer.testing import CliRunner, Result

TARSCLI = Path(sys.executable).parent / "tarscli"


def tarscli(cwd: Path, env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    """`tarscli ARGUMENTS` as a real process, as a user runs it from a shell in CWD."""
    return subprocess.run(
        [str(TARSCLI), *arguments],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def cli_env(directory: Path) -> dict[str, str]:
    """The environment of a local `tarscli` run whose scratch and learning store are in DIRECTORY.

    Without OLLAMA_HOST, so that a run uses the engine its command line names.
    """
    variables = {key: value for key, value in os.environ.items() if key != "OLLAMA_HOST"}
    variables.update(
        TARS_SCRATCH_DIR=str(directory / "scratch"),
        TARS_LEARNING_DB=str(directory / "learning.sqlite3"),
        COLUMNS="200",
    )
    return variables


class Cli(Protocol):
    def __call__(self, *args: str, kubeconfig: Path | None = None) -> Result: ...


def invoke(*args: str) -> Result:
    """Run the real app in-process, as a user would from a shell (exceptions are not caught)."""
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def custom(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


def get_object(
    api_client: client.ApiClient, namespace: str, plural: str, name: str
) -> dict[str, Any]:
    obj = custom(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    return cast(dict[str, Any], obj)


def list_objects(api_client: client.ApiClient, namespace: str, plural: str) -> list[dict[str, Any]]:
    listed = custom(api_client).list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
    return cast(list[dict[str, Any]], cast(dict[str, Any], listed)["items"])


def tarscli_config_maps(api_client: client.ApiClient, namespace: str) -> list[client.V1ConfigMap]:
    """ConfigMaps the CLI created (uploads), by its managed-by label."""
    return (
        client.CoreV1Api(api_client)
        .list_namespaced_config_map(
            namespace, label_selector="app.kubernetes.io/managed-by=tarscli"
        )
        .items
    )


def patch_status(
    api_client: client.ApiClient, namespace: str, plural: str, name: str, status: dict[str, Any]
) -> None:
    """Write an object's status as its controller would (the status subresource)."""
    custom(api_client).patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        plural,
        name,
        {"status": status},
        _content_type="application/merge-patch+json",
    )


def config_map_archive(api_client: client.ApiClient, namespace: str, name: str, key: str) -> bytes:
    config_map = client.CoreV1Api(api_client).read_namespaced_config_map(name, namespace)
    assert config_map.binary_data is not None
    return base64.b64decode(config_map.binary_data[key])
