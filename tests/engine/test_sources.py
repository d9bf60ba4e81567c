"""A run's source made into a working directory: volumes, uploads, git and its credentials.

Git runs for real against real repositories and a real silent server.
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from pathlib import Path

import pytest
from kubernetes import client
from tars_api.run import VolumeSource
from tars_engine.cluster.sources import (
    SourceError,
    clone,
    git_options,
    mounted_volumes,
    prepare_upload,
    read_credentials,
    volume_root,
)
from tars_engine.core.git import GitError, GitOptions, GitStopped, GitTimedOut, git, run_git
from tars_engine.core.snapshot import ArchiveLimits, pack_project

from tests.harness.silent_server import silent_server
from tests.harness.workflow import shop_origin, shop_project


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
    prepare_upload(pack_project(project), work / "project", work, ArchiveLimits())
    assert git(work / "project", "status", "--porcelain") == ""
    assert (work / "project" / "shop" / "cart.py").read_bytes() == (
        project / "shop" / "cart.py"
    ).read_bytes()
    assert not (work / "upload.tar.gz").exists()


def test_an_unsafe_upload_is_refused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(SourceError, match="the uploaded archive cannot be used"):
        prepare_upload(b"not a tar.gz", work / "project", work, ArchiveLimits())


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
    options = git_options(credentials, tmp_path / "secrets", allow_file=False, timeout_seconds=60)
    env = options.env
    assert token not in repr(options) and options.secrets == (token,)
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


def test_a_file_url_is_cloned_only_when_the_run_allows_it(tmp_path: Path) -> None:
    bare = shop_origin(tmp_path)
    with pytest.raises(SourceError, match="only when the git source sets allowFileProtocol"):
        clone(f"file://{bare}", "main", tmp_path / "refused", GitOptions())
    assert not (tmp_path / "refused").exists()
    clone(f"file://{bare}", "main", tmp_path / "allowed", GitOptions(allow_file=True))
    assert (tmp_path / "allowed" / "shop" / "cart.py").is_file()


@pytest.mark.parametrize(
    ("url", "refusal"),
    [
        ("fd::3", "remote helper 'fd::' URLs are not allowed"),
        ("ext::sh -c touch% owned", "remote helper 'ext::' URLs are not allowed"),
        ("/srv/project.git", "a plain path is not a repository URL"),
        ("../project.git", "a plain path is not a repository URL"),
        ("http://example.com/p.git", "transport 'http' is not one of https, ssh, git"),
        ("FILE:///srv/p.git", "transport 'FILE' is not one of https, ssh, git, file"),
    ],
)
def test_transports_outside_the_allowlist_are_refused_in_one_line(
    tmp_path: Path, url: str, refusal: str
) -> None:
    with pytest.raises(SourceError, match=refusal) as refused:
        clone(url, "main", tmp_path / "clone", GitOptions(allow_file=True))
    assert "\n" not in str(refused.value)
    assert str(refused.value).startswith(f"spec.source.git.url {url} is refused:")


def test_git_itself_refuses_the_transports_left_out(tmp_path: Path) -> None:
    """The allowlist holds in git too, for a remote no URL check looked at."""
    bare = shop_origin(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "--quiet")
    with pytest.raises(GitError, match="transport 'file' not allowed"):
        git(work, "fetch", "--quiet", f"file://{bare}", "main")
    git(work, "fetch", "--quiet", f"file://{bare}", "main", options=GitOptions(allow_file=True))
    owned = tmp_path / "owned"
    with pytest.raises(GitError, match="transport 'ext' not allowed"):
        git(work, "fetch", f"ext::sh -c touch% {owned}", options=GitOptions(allow_file=True))
    assert not owned.exists()


def test_a_git_command_past_its_timeout_is_killed_with_what_it_started(tmp_path: Path) -> None:
    with silent_server() as server:
        options = GitOptions(timeout_seconds=1)
        with pytest.raises(GitTimedOut, match="git ls-remote timed out after 1s"):
            run_git(tmp_path, "ls-remote", server.git_url(), options=options)
        assert server.accepted.is_set()
        with pytest.raises(SourceError, match=rf"cannot fetch {server.git_url()}: .*timed out"):
            clone(server.git_url(), "main", tmp_path / "clone", options)


def test_a_stop_kills_a_hanging_git_command(tmp_path: Path) -> None:
    stop = threading.Event()
    with silent_server() as server:
        # The stop comes once git is connected and waiting: from the server that it waits on.
        stopper = threading.Thread(
            target=lambda: server.accepted.wait() and stop.set(), daemon=True
        )
        stopper.start()
        with pytest.raises(GitStopped, match="git ls-remote was stopped"):
            run_git(tmp_path, "ls-remote", server.git_url(), stop=stop)


def test_git_messages_never_show_the_secrets_they_were_given(tmp_path: Path) -> None:
    secret = "hunter2-token"
    git(tmp_path, "init", "--quiet")
    with pytest.raises(GitError) as failed:
        git(tmp_path, "rev-parse", f"no-such-ref-{secret}", options=GitOptions(secrets=(secret,)))
    assert secret not in str(failed.value) and "no-such-ref-***" in str(failed.value)
    assert os.environ.get("GIT_ALLOW_PROTOCOL") is None  # set for git only, not this process
