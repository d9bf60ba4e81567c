"""A run's source made into a working directory: volumes, uploads and git credentials."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from kubernetes import client
from tars_api.run import VolumeSource
from tars_engine.cluster.sources import (
    SourceError,
    git,
    git_environment,
    mounted_volumes,
    prepare_upload,
    read_credentials,
    volume_root,
)
from tars_engine.core.snapshot import pack_project

from tests.harness.workflow import shop_project


@pytest.mark.parametrize("value", ["not json", '["a"]', '{"claim:x": 3}'])
def test_malformed_volume_map_is_refused(value: str) -> None:
    with pytest.raises(SourceError, match="TARS_VOLUMES"):
        mounted_volumes({"TARS_VOLUMES": value})


def test_volume_root_maps_claims_and_host_paths(tmp_path: Path) -> None:
    (tmp_path / "data" / "project").mkdir(parents=True)
    volumes = mounted_volumes(
        {"TARS_VOLUMES": f'{{"claim:code": "{tmp_path / "data"}", "hostPath:/src": "{tmp_path}"}}'}
    )
    claim = VolumeSource(claim_name="code", sub_path="project")
    assert volume_root(claim, volumes) == tmp_path / "data" / "project"
    assert volume_root(VolumeSource(host_path="/src"), volumes) == tmp_path
    with pytest.raises(
        SourceError, match=r"host path /elsewhere is not mounted .*'hostPath:/elsewhere'"
    ):
        volume_root(VolumeSource(host_path="/elsewhere"), volumes)
    with pytest.raises(SourceError, match="is not a directory"):
        volume_root(VolumeSource(claim_name="code", sub_path="missing"), volumes)


def test_upload_is_extracted_and_committed_as_a_base(tmp_path: Path) -> None:
    project = shop_project(tmp_path / "shop")
    work = tmp_path / "work"
    work.mkdir()
    prepare_upload(pack_project(project), work / "project", work)
    assert git(work / "project", "status", "--porcelain") == ""
    assert (work / "project" / "shop" / "cart.py").read_bytes() == (
        project / "shop" / "cart.py"
    ).read_bytes()
    assert not (work / "upload.tar.gz").exists()


def test_an_unsafe_upload_is_refused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(SourceError, match="the uploaded archive cannot be used"):
        prepare_upload(b"not a tar.gz", work / "project", work)


def test_credentials_from_a_secret_reach_git_through_askpass_only(
    tmp_path: Path, api_client: client.ApiClient, namespace: str
) -> None:
    token = "s3cr3t-token-value"
    client.CoreV1Api(api_client).create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="git-token"),
            data={"token": base64.b64encode(token.encode()).decode()},
        ),
    )
    credentials = read_credentials(api_client, namespace, "git-token")
    assert token not in repr(credentials)
    env = git_environment(credentials, tmp_path / "secrets")
    assert all(token not in value for key, value in env.items() if key != "TARS_GIT_PASSWORD")
    answer = subprocess.run(
        [env["GIT_ASKPASS"], "Password for 'https://example.com': "],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert answer.stdout.strip() == token
    with pytest.raises(SourceError, match=f"Secret {namespace}/absent .*404"):
        read_credentials(api_client, namespace, "absent")
