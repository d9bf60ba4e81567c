"""Failures before any TARS object is touched: no kubeconfig, no cluster, no CRDs.

The CRD cases need a cluster without the TARS CRDs, so this module starts a second,
bare control plane of its own; `setup --install-crds` then installs them there.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from tars_api.crdgen import crd_manifests

from tests.harness import controlplane
from tests.harness.cli import invoke, tarscli_config_maps

CRDS_MISSING = (
    "error: the TARS CRDs are not installed in this cluster (missing {missing}); "
    'run "tarscli self-code setup --install-crds" or "kubectl apply -f crds/"\n'
)
BOTH_CRDS = "tarsreplicas.tars.dev, selfcodingruns.tars.dev"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_missing_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = invoke("self-code", "status", "--kubeconfig", str(tmp_path / "absent"))
    assert explicit.exit_code == 1
    assert (
        explicit.stderr
        == f"error: kubeconfig {tmp_path / 'absent'} does not exist or is not a file\n"
    )
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    default = invoke("replica", "list")
    assert default.exit_code == 1
    assert default.stderr == (
        f"error: no kubeconfig found at {tmp_path}/.kube/config; pass --kubeconfig FILE or set KUBECONFIG\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nothing-here"))
    from_environment = invoke("replica", "list")
    assert from_environment.exit_code == 1
    assert "KUBECONFIG names" in from_environment.stderr


GARBAGE_KUBECONFIGS = {
    "not-utf-8": (b"\xec\x9f\x00\xff binary noise", "byte 0xec at offset 0 is not UTF-8 text"),
    "not-yaml": (b"clusters: [unclosed\n", "not YAML (line 2, column 1: expected ',' or ']'"),
    "a-list": (b"- apiVersion: v1\n", "it holds a YAML list, not a mapping"),
    "wrong-shape": (
        b"apiVersion: v1\ncurrent-context: c\ncontexts: 5\n",
        "an entry is not what a kubeconfig holds there",
    ),
    "empty": (b"", "file is empty"),
}


@pytest.mark.parametrize("case", GARBAGE_KUBECONFIGS, ids=list(GARBAGE_KUBECONFIGS))
def test_a_garbage_kubeconfig_is_one_line(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content, fragment = GARBAGE_KUBECONFIGS[case]
    garbage = tmp_path / "kubeconfig"
    garbage.write_bytes(content)
    explicit = invoke("replica", "list", "--kubeconfig", str(garbage))
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'absent'}{os.pathsep}{garbage}")
    from_environment = invoke("self-code", "status")
    for result in (explicit, from_environment):
        assert result.exit_code == 1
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert str(garbage) in result.stderr and fragment in result.stderr, result.stderr


def test_unreachable_cluster(tmp_path: Path, kubeconfig: Path) -> None:
    port = closed_port()
    unreachable = json.loads(kubeconfig.read_text())
    unreachable["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path = tmp_path / "unreachable.kubeconfig"
    path.write_text(json.dumps(unreachable))
    for command in (
        ["self-code", "status"],
        ["replica", "list"],
        ["self-code", "setup", "--no-wait"],
    ):
        result = invoke(*command, "--kubeconfig", str(path))
        assert result.exit_code == 1
        assert result.stderr == (
            f"error: cannot reach the Kubernetes API at https://127.0.0.1:{port}: [Errno 111] Connection refused\n"
        )


def test_unknown_context(kubeconfig: Path) -> None:
    result = invoke("replica", "list", "--kubeconfig", str(kubeconfig), "--context", "elsewhere")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        'error: context "elsewhere" is not in the kubeconfig (contexts: '
    )


def test_console_script_reports_without_traceback(tmp_path: Path) -> None:
    tarscli = Path(sys.executable).with_name("tarscli")
    result = subprocess.run(
        [str(tarscli), "self-code", "stop", "--kubeconfig", str(tmp_path / "absent")],
        check=False, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 1
    assert (
        result.stderr
        == f"error: kubeconfig {tmp_path / 'absent'} does not exist or is not a file\n"
    )
    assert result.stdout == ""
    helped = subprocess.run(
        [str(tarscli), "--help"], check=False, capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0
    for group in ("self-code", "replica", "demo"):
        assert group in helped.stdout


@pytest.fixture(scope="module")
def bare_kubeconfig(
    control_plane: controlplane.ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A second control plane, without the TARS CRDs."""
    state_dir = tmp_path_factory.mktemp("bare-controlplane")
    plane = controlplane.up(state_dir, control_plane.tools_dir)
    try:
        yield plane.kubeconfig
    finally:
        controlplane.down(state_dir)


def test_missing_crds_then_install_crds(
    bare_kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = ["--kubeconfig", str(bare_kubeconfig)]
    for command, missing in (
        (["self-code", "status"], "selfcodingruns.tars.dev"),
        (["self-code", "stop", "some-run"], "selfcodingruns.tars.dev"),
        (["replica", "list"], "tarsreplicas.tars.dev"),
        (["replica", "status", "analyzer"], "tarsreplicas.tars.dev"),
        (["self-code", "setup"], BOTH_CRDS),
    ):
        result = invoke(*command, *cluster)
        assert result.exit_code == 1, result.output
        assert result.stderr == CRDS_MISSING.format(missing=missing)
    project = tmp_path / "p"
    (project / "src").mkdir(parents=True)
    (project / "src" / "a.py").write_text("A = 1\n")
    monkeypatch.chdir(project)
    started = invoke("self-code", "start", "-t", "src", *cluster)
    assert started.exit_code == 1 and started.stderr == CRDS_MISSING.format(missing=BOTH_CRDS)
    api_client = config.new_client_from_config(config_file=str(bare_kubeconfig))
    assert tarscli_config_maps(api_client, "default") == []

    installed = invoke("self-code", "setup", "--install-crds", "--no-wait", *cluster)
    assert installed.exit_code == 0, installed.output
    assert installed.stdout.splitlines() == [
        "customresourcedefinition/tarsreplicas.tars.dev applied",
        "customresourcedefinition/selfcodingruns.tars.dev applied",
        *(
            f"tarsreplica/{role} created"
            for role in ("analyzer", "generator", "tester", "coordinator")
        ),
        *(f"{kind}/tars-coordinator created" for kind in ("serviceaccount", "role", "rolebinding")),
    ]
    extensions = client.ApiextensionsV1Api(api_client)
    for manifest in crd_manifests():
        crd = extensions.read_custom_resource_definition(manifest["metadata"]["name"])
        assert crd.status is not None and crd.status.conditions is not None
        assert {condition.type: condition.status for condition in crd.status.conditions}[
            "Established"
        ] == "True"
        assert crd.spec.names.short_names == manifest["spec"]["names"]["shortNames"]
    listed = invoke("replica", "list", "-o", "json", *cluster)
    assert listed.exit_code == 0
    assert sorted(item["spec"]["role"] for item in json.loads(listed.stdout)["items"]) == [
        "analyzer", "coordinator", "generator", "tester",
    ]  # fmt: skip
    started = invoke("self-code", "start", "-t", "src", *cluster)
    assert started.exit_code == 0, started.output
    assert started.stdout.startswith("p-")


def test_refused_credentials(tmp_path: Path, kubeconfig: Path) -> None:
    stranger = json.loads(kubeconfig.read_text())
    stranger["users"][0]["user"] = {"token": "not-a-token-this-server-issued"}
    path = tmp_path / "stranger.kubeconfig"
    path.write_text(json.dumps(stranger))
    result = invoke("self-code", "status", "--kubeconfig", str(path))
    assert result.exit_code == 1
    assert result.stderr == (
        "error: unauthorized: the Kubernetes API refused the kubeconfig's credentials (Unauthorized); "
        "check the user of the current context\n"
    )
