"""The images `make images` built (hack/build-images.sh), and containers run from them.

The build's last line names a directory with `images.json` (engine, tags, the podman
configuration); `make test` passes it as TARS_IMAGES_DIR. Containers run with the security
settings the operator gives every replica pod (tars_operator.replicas): the fixed non-root
user, a read-only root filesystem with only the scratch volume writable (an emptyDir owned
through fsGroup), no capabilities, no privilege escalation, the runtime's default seccomp
profile. What the sandbox probe varies on top is a `ContainerSecurity`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict
from tars_api.names import ReplicaEnv
from tars_api.vocabulary import Role
from tars_operator.config import OperatorConfig

from tests.harness.controlplane import free_port
from tests.harness.kubectl import REPOSITORY
from tests.harness.tools import run_tool

MANIFEST = "images.json"
# The documented recipe of a run's test image: the replica image plus test requirements.
TEST_IMAGE_DOCKERFILE = REPOSITORY / "examples" / "test-image" / "Dockerfile"
TEST_IMAGE_REQUIREMENTS = "requirements.txt"
# pip inside a build reaches the index this machine's pip uses, trusting its CA bundle.
PIP_BUILD_SETTINGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST")
MACHINE_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CONTAINER_TIMEOUT_SECONDS = 300
# A bound on a replica's start: a broken image fails the test, never hangs it.
START_SECONDS = 120
# Host ids for a container's private user namespace: container ids 0-65535, which holds
# the replica's 65532, map to 100000-165535 on the host.
PRIVATE_USERS_MAP = "0:100000:65536"
OPERATOR_CONFIG = OperatorConfig()
SCRATCH_DIR = OPERATOR_CONFIG.scratch_dir
REPLICA_USER = f"{OPERATOR_CONFIG.run_as_user}:{OPERATOR_CONFIG.run_as_group}"


class ImageBuild(BaseModel):
    """What hack/build-images.sh wrote into images.json."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: Literal["docker", "podman", "buildah"]
    containers_conf: Path
    base: str
    version: str
    replica: str
    operator: str


class ContainerSecurity(BaseModel):
    """How a container is confined beyond the pod's settings, in Kubernetes' terms."""

    model_config = ConfigDict(frozen=True)

    image_user: bool = False
    """Run as the image's USER instead of the pod's runAsUser/runAsGroup."""
    unmasked_proc: bool = False
    """procMount: Unmasked: /proc without the runtime's masked and read-only paths."""
    private_users: bool = False
    """hostUsers: false: the container's uids are mapped into a user namespace of its own."""


POD_SECURITY = ContainerSecurity()
"""Exactly the replica pod's settings."""


def load_build(images_dir: Path) -> ImageBuild:
    return ImageBuild.model_validate_json((images_dir / MANIFEST).read_text(encoding="utf-8"))


class Engine:
    """Runs containers from the built images with the engine that built them (podman for buildah's)."""

    def __init__(self, build: ImageBuild) -> None:
        self.build = build
        self.program: Literal["docker", "podman"] = (
            "docker" if build.engine == "docker" else "podman"
        )

    def available(self) -> str | None:
        """Why containers cannot run here; None: they can."""
        if shutil.which(self.program) is None:
            return f"{self.program} is not on PATH; run `make images` (it installs podman as root)"
        for image in (self.build.replica, self.build.operator):
            if self.call("image", "inspect", image, check=False).returncode != 0:
                return f"{self.program} has no image {image}; run `make images`"
        return None

    def call(
        self, *arguments: str, check: bool = True, timeout: float = CONTAINER_TIMEOUT_SECONDS
    ) -> subprocess.CompletedProcess[str]:
        # CONTAINERS_CONF gives podman the runtime (runc) and ulimits this machine allows.
        environment = {"CONTAINERS_CONF": str(self.build.containers_conf)}
        return run_tool(
            [self.program, *arguments],
            check=check,
            timeout=timeout,
            env={**os.environ, **environment},
        )

    def image_id(self, reference: str) -> str | None:
        found = self.call("image", "inspect", "--format", "{{.Id}}", reference, check=False)
        return found.stdout.strip() if found.returncode == 0 else None

    def build_test_image(self, name: str, requirements: str) -> str:
        """A run's test image as examples/test-image/Dockerfile makes it, FROM the replica
        image with `requirements` installed; tagged by the digest of all that goes into it,
        so an unchanged one is found in the engine's storage instead of built again."""
        replica_id = self.image_id(self.build.replica)
        if replica_id is None:
            raise AssertionError(f"{self.program} has no image {self.build.replica}")
        build_args = [
            f"{setting}={os.environ[setting]}" for setting in PIP_BUILD_SETTINGS
            if os.environ.get(setting)
        ]  # fmt: skip
        digest = hashlib.sha256(
            "\0".join(
                [replica_id, TEST_IMAGE_DOCKERFILE.read_text(), requirements, *build_args]
            ).encode()
        ).hexdigest()
        reference = f"localhost/{name}:{digest[:16]}"
        if self.image_id(reference) is not None:
            return reference
        ca_bundle = Path(os.environ.get("PIP_CERT") or MACHINE_CA_BUNDLE)
        with tempfile.TemporaryDirectory(prefix="tars-test-image-") as context:
            (Path(context) / TEST_IMAGE_REQUIREMENTS).write_text(requirements)
            self.call(
                "build", *self._build_flags(), "--network", "host",
                "--secret", f"id=ca-bundle,src={ca_bundle}",
                "--build-arg", f"REPLICA_IMAGE={self.build.replica}",
                *(flag for argument in build_args for flag in ("--build-arg", argument)),
                "--file", str(TEST_IMAGE_DOCKERFILE), "--tag", reference, context,
            )  # fmt: skip
        return reference

    def _build_flags(self) -> list[str]:
        """What hack/build-images.sh gives podman's builds: runc and this machine's ulimits,
        which builds do not read from containers.conf."""
        if self.program == "docker":
            return []
        conf = tomllib.loads(self.build.containers_conf.read_text(encoding="utf-8"))
        ulimits = conf.get("containers", {}).get("default_ulimits", [])
        return ["--runtime", "runc", *(flag for limit in ulimits for flag in ("--ulimit", limit))]

    def security_flags(self, security: ContainerSecurity) -> list[str]:
        """The pod's security settings, and what `security` adds, as `run` flags."""
        flags = [
            *([] if security.image_user else ["--user", REPLICA_USER]),
            "--read-only",
            "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
            "--env", f"HOME={SCRATCH_DIR}",
            "--env", f"TMPDIR={SCRATCH_DIR}",
            "--env", f"{ReplicaEnv.scratch_dir}={SCRATCH_DIR}",
        ]  # fmt: skip
        if self.program == "podman":
            # podman's --read-only adds writable tmpfs on /tmp, /var/tmp and /run; a pod's
            # readOnlyRootFilesystem does not. `U` owns the tmpfs by the container's user.
            flags += ["--read-only-tmpfs=false", "--tmpfs", f"{SCRATCH_DIR}:rw,U"]
            if security.unmasked_proc:
                flags += ["--security-opt", "unmask=/proc/*"]
            if security.private_users:
                flags += ["--uidmap", PRIVATE_USERS_MAP, "--gidmap", PRIVATE_USERS_MAP]
            return flags
        uid, _, gid = REPLICA_USER.partition(":")
        flags += ["--tmpfs", f"{SCRATCH_DIR}:rw,uid={uid},gid={gid}"]
        if security.unmasked_proc:
            flags += ["--security-opt", "systempaths=unconfined"]
        if security.private_users:
            raise ValueError("docker maps users only daemon-wide (userns-remap); use podman")
        return flags

    def run(
        self,
        image: str,
        *arguments: str,
        entrypoint: str | None = None,
        security: ContainerSecurity = POD_SECURITY,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """One container, run to its end and removed."""
        return self.call(
            "run", "--rm", "--network", "none", *self.security_flags(security),
            *(["--entrypoint", entrypoint] if entrypoint else []), image, *arguments,
            check=check,
        )  # fmt: skip

    @contextmanager
    def replica(self, role: Role, *, security: ContainerSecurity = POD_SECURITY) -> Iterator[str]:
        """The replica image serving `role` with its own CMD (all addresses of the host's
        network, a free port); its base URL once /healthz answers. Removed afterwards."""
        port = free_port()
        name = f"tars-test-{role.value}-{uuid.uuid4().hex[:8]}"
        self.call(
            "run", "--detach", "--name", name, "--network", "host",
            *self.security_flags(security),
            "--env", f"{ReplicaEnv.role}={role.value}",
            "--env", f"{ReplicaEnv.port}={port}",
            self.build.replica,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            self._wait_healthy(name, url)
            yield url
        finally:
            self.call("rm", "--force", name, check=False)

    def _wait_healthy(self, name: str, url: str) -> None:
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            state = self.call("inspect", "--format", "{{.State.Running}}", name, check=False)
            if state.stdout.strip() != "true" or time.monotonic() > deadline:
                logs = self.call("logs", name, check=False)
                raise AssertionError(
                    f"{name} never answered {url}/healthz (running: {state.stdout.strip()}):\n"
                    f"{logs.stdout}{logs.stderr}"
                )
            time.sleep(0.2)


def missing_build(images_dir: Path) -> str | None:
    """Why the images in `images_dir` cannot be run here; None: they can."""
    manifest = images_dir / MANIFEST
    if not manifest.is_file():
        return f"{manifest} is missing; run `make images`"
    return Engine(load_build(images_dir)).available()
