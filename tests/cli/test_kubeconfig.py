"""Kubeconfigs the way kubectl reads them, against the real API server: credentials from an
exec plugin, a token file, files merged from KUBECONFIG with paths relative to each file."""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.cli import Cli, invoke
from tests.harness.credentials import write_kubeconfig, write_private

pytestmark = pytest.mark.usefixtures("tars_crds")

EXEC_API_VERSION = "client.authentication.k8s.io/v1"


def exec_plugin(directory: Path, credential: dict[str, object], *, exit_code: int = 0) -> Path:
    """A real credential plugin: prints `credential` as an ExecCredential, and saves the
    KUBERNETES_EXEC_INFO it was given next to itself."""
    script = directory / "credential-plugin"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, pathlib, sys\n"
        f"pathlib.Path({str(directory / 'exec-info.json')!r}).write_text("
        "os.environ['KUBERNETES_EXEC_INFO'])\n"
        f"print(json.dumps({{'apiVersion': {EXEC_API_VERSION!r}, 'kind': 'ExecCredential', "
        f"'status': {credential!r}}}))\n"
        f"sys.exit({exit_code})\n"
    )
    script.chmod(0o700)
    return script


def admin_parts(kubeconfig: Path) -> tuple[dict[str, object], dict[str, str]]:
    document = json.loads(kubeconfig.read_text())
    return document["clusters"][0]["cluster"], document["users"][0]["user"]


def with_user(kubeconfig: Path, path: Path, user: dict[str, object]) -> Path:
    document = json.loads(kubeconfig.read_text())
    document["users"][0]["user"] = user
    write_kubeconfig(path, document)
    return path


def test_credentials_from_an_exec_plugin(
    kubeconfig: Path, namespace: str, tmp_path: Path, cli: Cli
) -> None:
    created = cli("replica", "create", "analyzer", "--role", "analyzer")
    assert created.exit_code == 0, created.output
    _, admin = admin_parts(kubeconfig)
    plugin = exec_plugin(
        tmp_path,
        {
            "clientCertificateData": base64.b64decode(admin["client-certificate-data"]).decode(),
            "clientKeyData": base64.b64decode(admin["client-key-data"]).decode(),
        },
    )
    plugged = with_user(
        kubeconfig,
        tmp_path / "exec.kubeconfig",
        {"exec": {"apiVersion": EXEC_API_VERSION, "command": str(plugin), "args": []}},
    )
    listed = cli("replica", "list", "-o", "json", kubeconfig=plugged)
    assert listed.exit_code == 0, listed.output
    assert [item["metadata"]["name"] for item in json.loads(listed.stdout)["items"]] == ["analyzer"]
    info = json.loads((tmp_path / "exec-info.json").read_text())
    assert info["apiVersion"] == EXEC_API_VERSION and info["kind"] == "ExecCredential"


def test_a_failing_exec_plugin_is_one_line(kubeconfig: Path, tmp_path: Path, cli: Cli) -> None:
    plugin = exec_plugin(tmp_path, {}, exit_code=3)
    plugged = with_user(
        kubeconfig,
        tmp_path / "exec.kubeconfig",
        {"exec": {"apiVersion": EXEC_API_VERSION, "command": str(plugin)}},
    )
    result = cli("replica", "list", kubeconfig=plugged)
    assert result.exit_code == 1
    assert result.stderr == f"error: the kubeconfig's exec plugin {plugin} failed (exit 3)\n"
    missing = with_user(
        kubeconfig,
        tmp_path / "missing.kubeconfig",
        {"exec": {"apiVersion": EXEC_API_VERSION, "command": "no-such-plugin-here",
                  "installHint": "install it from\nthe vendor"}},
    )  # fmt: skip
    absent = cli("replica", "list", kubeconfig=missing)
    assert absent.exit_code == 1
    assert absent.stderr.startswith(
        "error: cannot run the kubeconfig's exec plugin no-such-plugin-here: "
    ) and absent.stderr.endswith("(install it from the vendor)\n")


def test_merged_files_token_file_and_relative_paths(
    kubeconfig: Path,
    service_account_kubeconfig: Callable[[str], Path],
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Users and contexts in one file, the cluster in another; the token and the CA in
    files named relative to the file that names them, as kubectl resolves them."""
    account = json.loads(service_account_kubeconfig("reader").read_text())
    cluster, _ = admin_parts(kubeconfig)
    users_dir, clusters_dir = tmp_path / "users", tmp_path / "clusters"
    write_private(users_dir / "reader.token", str(account["users"][0]["user"]["token"]))
    (clusters_dir / "pki").mkdir(parents=True)
    (clusters_dir / "pki" / "ca.crt").write_bytes(
        base64.b64decode(str(cluster["certificate-authority-data"]))
    )
    users_file, clusters_file = users_dir / "config", clusters_dir / "config"
    write_kubeconfig(
        users_file,
        {
            "apiVersion": "v1",
            "kind": "Config",
            "users": [{"name": "reader", "user": {"tokenFile": "reader.token"}}],
            "contexts": [
                {"name": "merged", "context": {"cluster": "local", "user": "reader",
                                               "namespace": namespace}}
            ],
            "current-context": "merged",
        },
    )  # fmt: skip
    write_kubeconfig(
        clusters_file,
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "local", "cluster": {"server": cluster["server"],
                                              "certificate-authority": "pki/ca.crt"}}
            ],
            # A later file's current-context does not override the first one's.
            "current-context": "elsewhere",
        },
    )  # fmt: skip
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(users_file), str(clusters_file)]))
    result = invoke("replica", "list")
    # The token made it the reader, in the context's namespace; it may list nothing.
    assert result.exit_code == 1
    assert result.stderr.startswith("error: forbidden: ")
    assert f'"system:serviceaccount:{namespace}:reader" cannot list resource "tarsreplicas"' in (
        result.stderr
    )
    assert f'in the namespace "{namespace}"' in result.stderr


def test_a_context_of_another_file_naming_an_undefined_cluster(
    kubeconfig: Path, tmp_path: Path
) -> None:
    document = json.loads(kubeconfig.read_text())
    document["contexts"][0]["context"]["cluster"] = "nowhere"
    broken = tmp_path / "broken.kubeconfig"
    write_kubeconfig(broken, document)
    result = invoke("replica", "list", "--kubeconfig", str(broken))
    assert result.exit_code == 1
    context = document["contexts"][0]["name"]
    assert result.stderr == (
        f'error: cannot use the kubeconfig {broken}: context "{context}" names the cluster '
        '"nowhere", which it does not define\n'
    )


def test_certificates_that_cannot_be_used_are_one_line(kubeconfig: Path, tmp_path: Path) -> None:
    document = json.loads(kubeconfig.read_text())
    cluster = document["clusters"][0]["cluster"]
    cluster["certificate-authority-data"] = base64.b64encode(b"not a certificate").decode()
    broken = tmp_path / "broken.kubeconfig"
    write_kubeconfig(broken, document)
    result = invoke("replica", "list", "--kubeconfig", str(broken))
    assert result.exit_code == 1
    assert (
        result.stderr.startswith(
            f"error: cannot reach the Kubernetes API at {cluster['server']}: the kubeconfig's "
            "certificates cannot be used ("
        )
        and result.stderr.count("\n") == 1
    )
