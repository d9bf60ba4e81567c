"""A run's source, made into a working directory the coordinator owns.

- `upload`: the archive the CLI put in a ConfigMap, extracted safely and committed as
  a base, so every improvement is tracked and the patch can be exported.
- `git`: the repository cloned at its ref (shallow when the server allows it), with
  credentials from a Secret; with auto-apply the improvements are commits on the
  branch `tars/<run>`, pushed at the end when the credentials allow it.
- `volume`: a directory mounted into the coordinator pod, worked on in place. The
  operator mounts each volume and says where in TARS_VOLUMES, a JSON map from
  `claim:<claimName>` or `hostPath:<path>` to the mount path.

Credentials never appear in a URL, a command line or a message: git reads them
through an askpass helper from its environment, or an ssh key file only the
coordinator can read. Git reaches the repository only over https, ssh or git (and
file:// when the run allows it), each command within the coordinator's git timeout
and killed when the run is asked to stop (`tars_engine.core.git`).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tars_api.names import ReplicaEnv
from tars_api.run import RunSource, VolumeSource

from tars_engine.core.applying import FALLBACK_IDENTITY
from tars_engine.core.git import GitError, GitInterrupted, GitOptions, git, refused_url_reason
from tars_engine.core.snapshot import ArchiveLimits, SnapshotError, extract_snapshot
from tars_engine.core.state import write_atomically

BRANCH_PREFIX = "tars/"
ASKPASS_SCRIPT = """#!/bin/sh
case "$1" in
  Username*) printf '%s\\n' "$TARS_GIT_USERNAME" ;;
  *) printf '%s\\n' "$TARS_GIT_PASSWORD" ;;
esac
"""
# Any user name works with a token over https for the common forges.
TOKEN_USERNAME = "x-access-token"


class SourceError(RuntimeError):
    """The run's source cannot be made into a working directory; one line says why."""


@dataclass(frozen=True)
class GitCredentials:
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssh_private_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Workspace:
    """Where the workflow works, and how its result leaves it."""

    root: Path
    fresh: bool
    """Made anew here: changes an earlier coordinator applied are not in it."""
    branch: str | None = None
    git_options: GitOptions = field(default_factory=GitOptions)


def branch_name(run_name: str) -> str:
    return BRANCH_PREFIX + run_name


def mounted_volumes(env: dict[str, str] | None = None) -> dict[str, Path]:
    """TARS_VOLUMES as a map; a malformed value is an error naming the variable."""
    raw = (env if env is not None else os.environ).get(ReplicaEnv.volumes, "").strip()
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{ReplicaEnv.volumes} is not JSON: {exc}") from exc
    if not isinstance(parsed, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in parsed.items()
    ):
        raise SourceError(
            f'{ReplicaEnv.volumes} must map "claim:<name>" or "hostPath:<path>" to paths'
        )
    return {key: Path(value) for key, value in parsed.items()}


def volume_key(volume: VolumeSource) -> str:
    return f"claim:{volume.claim_name}" if volume.claim_name else f"hostPath:{volume.host_path}"


def volume_root(volume: VolumeSource, volumes: dict[str, Path]) -> Path:
    key = volume_key(volume)
    described = (
        f"PersistentVolumeClaim {volume.claim_name}"
        if volume.claim_name
        else f"host path {volume.host_path}"
    )
    mount = volumes.get(key)
    if mount is None:
        raise SourceError(
            f"{described} is not mounted on this coordinator ({ReplicaEnv.volumes} has no {key!r})"
        )
    root = mount / volume.sub_path if volume.sub_path else mount
    if not root.is_dir():
        raise SourceError(f"{described}: {root} is not a directory")
    return root


def _secret_text(data: Mapping[str, object], key: str) -> str | None:
    value = data.get(key)
    return base64.b64decode(str(value)).decode("utf-8") if value else None


def _read_object(read: Callable[[str, str], Any], name: str, namespace: str, what: str) -> Any:
    """`read(name, namespace)`; an API error is a SourceError saying what was being read."""
    try:
        return read(name, namespace)
    except ApiException as exc:
        raise SourceError(f"cannot read {what}: {exc.status} {exc.reason}") from exc


def read_credentials(api: client.ApiClient, namespace: str, secret: str) -> GitCredentials:
    found = _read_object(
        client.CoreV1Api(api).read_namespaced_secret,
        secret,
        namespace,
        f"Secret {namespace}/{secret} for the git credentials",
    )
    data = found.data or {}
    token = _secret_text(data, "token")
    credentials = GitCredentials(
        username=_secret_text(data, "username") or (TOKEN_USERNAME if token else None),
        password=_secret_text(data, "password") or token,
        ssh_private_key=_secret_text(data, "ssh-privatekey"),
    )
    if credentials.password is None and credentials.ssh_private_key is None:
        raise SourceError(
            f"Secret {namespace}/{secret} has none of the keys password, token or ssh-privatekey"
        )
    return credentials


def read_upload(api: client.ApiClient, namespace: str, config_map: str, key: str) -> bytes:
    found = _read_object(
        client.CoreV1Api(api).read_namespaced_config_map,
        config_map,
        namespace,
        f"the uploaded project from ConfigMap {namespace}/{config_map}",
    )
    encoded = (found.binary_data or {}).get(key)
    if encoded is None:
        raise SourceError(f"ConfigMap {namespace}/{config_map} has no binaryData key {key!r}")
    return base64.b64decode(encoded)


def git_options(
    credentials: GitCredentials | None,
    secrets_dir: Path,
    *,
    allow_file: bool,
    timeout_seconds: float,
) -> GitOptions:
    """How git reaches the run's repository: never an interactive question, never a secret shown."""
    env = dict(FALLBACK_IDENTITY)
    secrets: tuple[str, ...] = ()
    if credentials is not None:
        secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if credentials is not None and credentials.password is not None:
        askpass = secrets_dir / "askpass.sh"
        write_atomically(askpass, ASKPASS_SCRIPT.encode(), mode=0o700)
        env.update(
            GIT_ASKPASS=str(askpass),
            TARS_GIT_USERNAME=credentials.username or TOKEN_USERNAME,
            TARS_GIT_PASSWORD=credentials.password,
        )
        secrets = (credentials.password,)
    if credentials is not None and credentials.ssh_private_key is not None:
        key = secrets_dir / "ssh-privatekey"
        key_text = credentials.ssh_private_key.rstrip("\n") + "\n"
        write_atomically(key, key_text.encode(), mode=0o600)
        env["GIT_SSH_COMMAND"] = (
            f"ssh -i {key} -o IdentitiesOnly=yes -o StrictHostKeyChecking=accept-new "
            f"-o UserKnownHostsFile={secrets_dir / 'known_hosts'}"
        )
    return GitOptions(
        env=env, secrets=secrets, allow_file=allow_file, timeout_seconds=timeout_seconds
    )


def prepare_upload(
    archive: bytes,
    root: Path,
    work_dir: Path,
    limits: ArchiveLimits,
    stop: threading.Event | None = None,
) -> None:
    """Extract the archive into `root` and commit it as the base of the run's changes."""
    archive_path = work_dir / "upload.tar.gz"
    write_atomically(archive_path, archive)
    root.mkdir(parents=True)
    try:
        extract_snapshot(archive_path, root, limits)
    except SnapshotError as exc:
        raise SourceError(f"the uploaded archive cannot be used: {exc}") from exc
    finally:
        archive_path.unlink(missing_ok=True)
    local = GitOptions(env=FALLBACK_IDENTITY)
    git(root, "init", "--quiet", options=local, stop=stop)
    git(root, "add", "--all", options=local, stop=stop)
    message = "uploaded project"
    git(root, "commit", "--quiet", "--allow-empty", "-m", message, options=local, stop=stop)


def clone(
    url: str, ref: str, root: Path, options: GitOptions, stop: threading.Event | None = None
) -> None:
    """Check out `ref` of `url` into `root`: one commit deep when the server allows it."""
    refused = refused_url_reason(url, allow_file=options.allow_file)
    if refused is not None:
        raise SourceError(f"spec.source.git.url {url} is refused: {refused}")
    root.mkdir(parents=True)
    git(root, "init", "--quiet", options=options, stop=stop)
    git(root, "remote", "add", "origin", "--", url, options=options, stop=stop)
    try:
        git(
            root,
            "fetch",
            "--quiet",
            "--depth",
            "1",
            "origin",
            "--",
            ref,
            options=options,
            stop=stop,
        )
        git(root, "checkout", "--quiet", "--detach", "FETCH_HEAD", options=options, stop=stop)
        return
    except GitInterrupted as exc:
        raise SourceError(f"cannot fetch {url}: {exc}") from exc
    except GitError as shallow_failure:
        try:
            # A commit id, or a server refusing shallow fetches: fetch everything.
            git(root, "fetch", "--quiet", "--tags", "origin", options=options, stop=stop)
        except GitError:
            raise SourceError(f"cannot fetch {url}: {shallow_failure}") from shallow_failure
    for candidate in (f"origin/{ref}", ref):
        try:
            git(root, "checkout", "--quiet", "--detach", candidate, options=options, stop=stop)
            return
        except GitInterrupted:
            raise
        except GitError:
            continue
    raise SourceError(f"{url} has no branch, tag or commit {ref!r}")


def materialise(
    source: RunSource,
    *,
    namespace: str,
    run_name: str,
    auto_apply: bool,
    work_dir: Path,
    api: Callable[[], client.ApiClient],
    volumes: dict[str, Path],
    limits: ArchiveLimits,
    git_timeout_seconds: float,
    stop: threading.Event | None = None,
) -> Workspace:
    """The working directory for a run; reused when this coordinator made it before.

    `api` is called only when an object must be read (an upload, a credentials Secret).
    A set `stop` kills the git command under way.
    """
    if source.volume is not None:
        root = volume_root(source.volume, volumes)
        return Workspace(root=root, fresh=False)
    root = work_dir / "project"
    ready_marker = work_dir / "source-ready"
    if source.upload is not None:
        if not ready_marker.exists():
            archive = read_upload(api(), namespace, source.upload.config_map, source.upload.key)
            _start_afresh(root)
            prepare_upload(archive, root, work_dir, limits, stop)
            ready_marker.touch()
            return Workspace(root=root, fresh=True)
        return Workspace(root=root, fresh=False)
    assert source.git is not None
    credentials = (
        read_credentials(api(), namespace, source.git.credentials_secret)
        if source.git.credentials_secret
        else None
    )
    options = git_options(
        credentials,
        work_dir / "secrets",
        allow_file=source.git.allow_file_protocol,
        timeout_seconds=git_timeout_seconds,
    )
    branch = branch_name(run_name) if auto_apply else None
    fresh = not ready_marker.exists()
    if fresh:
        _start_afresh(root)
        clone(source.git.url, source.git.ref, root, options, stop)
        if branch is not None:
            continue_branch(root, branch, options, stop)
        ready_marker.touch()
    return Workspace(root=root, fresh=fresh, branch=branch, git_options=options)


def continue_branch(
    root: Path, branch: str, options: GitOptions, stop: threading.Event | None = None
) -> None:
    """Check out the run's branch: the remote one when an earlier coordinator pushed it.

    Only a fetch that failed starts the branch anew; one that was killed fails the run,
    which would otherwise push a branch that lost the commits already pushed.
    """
    fetch = ("fetch", "--quiet", "origin", "--", f"refs/heads/{branch}")
    try:
        git(root, *fetch, options=options, stop=stop)
    except GitInterrupted:
        raise
    except GitError:
        git(root, "checkout", "--quiet", "-B", branch, options=options, stop=stop)
        return
    git(root, "checkout", "--quiet", "-B", branch, "FETCH_HEAD", options=options, stop=stop)


def push_branch(workspace: Workspace) -> str | None:
    """Push the run's branch; returns why it could not be pushed, or None when it was."""
    if workspace.branch is None:
        return None
    try:
        git(
            workspace.root,
            "push",
            "--quiet",
            "origin",
            f"{workspace.branch}:refs/heads/{workspace.branch}",
            options=workspace.git_options,
        )
    except GitError as exc:
        return str(exc)
    return None


def _start_afresh(root: Path) -> None:
    """Remove what a half-made earlier attempt left."""
    shutil.rmtree(root, ignore_errors=True)
