"""A container spec turned into a process to start: argv with `$(VAR)` references expanded
and mount paths rewritten, the executable found on a PATH that puts the interpreter's
own bin directory first, the environment an image would give, and the working directory."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

from tests.harness.podrunner.environment import (
    ContainerConfigError,
    PodContext,
    container_environment,
    expand,
)
from tests.harness.podrunner.volumes import MountMap, ServiceAccountToken


def search_path(env: Mapping[str, str]) -> str:
    interpreter_bin = str(Path(sys.executable).parent)
    return os.pathsep.join([interpreter_bin, env.get("PATH", os.environ.get("PATH", os.defpath))])


def resolve_executable(name: str, path: str) -> str:
    if os.sep in name:
        if os.access(name, os.X_OK):
            return name
        name = os.path.basename(name)
    found = shutil.which(name, path=path)
    if found is None:
        raise FileNotFoundError(f'executable file "{name}" not found in $PATH')
    return found


@dataclass(frozen=True)
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    mounts: MountMap


def launch_spec(
    context: PodContext,
    container: client.V1Container,
    token_volumes: set[str],
    token: ServiceAccountToken | None,
) -> LaunchSpec:
    if not container.command:
        raise ContainerConfigError(
            "container has no command: the pod runner has no image entrypoint to fall back on"
        )
    mounts = MountMap.for_container(context, container)
    env = container_environment(context, container)
    argv = [
        mounts.rewrite(expand(word, env)) for word in [*container.command, *(container.args or [])]
    ]
    home = context.directory / "home"
    home.mkdir(exist_ok=True)
    base = {
        "PATH": search_path({}),
        "HOME": str(home),
        "HOSTNAME": context.pod.spec.hostname or context.name,
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }
    if token is not None and any(
        mount.name in token_volumes for mount in container.volume_mounts or []
    ):
        base["KUBECONFIG"] = str(token.kubeconfig)
    full_env = base | {name: mounts.rewrite(value) for name, value in env.items()}
    argv[0] = resolve_executable(argv[0], search_path(full_env))
    cwd = context.directory
    if container.working_dir:
        mapped = mounts.host_path(container.working_dir)
        cwd = Path(mapped) if mapped else cwd
    return LaunchSpec(argv=argv, env=full_env, cwd=cwd, mounts=mounts)
