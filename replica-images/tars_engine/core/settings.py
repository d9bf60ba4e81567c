"""Replica settings: flags fall back to environment variables, then to defaults.

The scratch directory is the only place a replica writes to, so the replica runs
on a read-only root filesystem with one writable volume mounted there. On a user's
machine it defaults to the user's own cache directory, never a fixed path in the shared
/tmp, where another user could plant what a run would later pick up.
"""

from __future__ import annotations

import importlib.metadata
import os
import stat
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator
from tars_api.names import ReplicaEnv
from tars_api.vocabulary import DEFAULT_MODEL, EngineName, Role

from tars_engine.core.models import RoleInfo
from tars_engine.core.snapshot import (
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_EXTRACTED_BYTES,
    ArchiveLimits,
)

ENGINE_VERSION = importlib.metadata.version("tars-selfcoding")
DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"
DEFAULT_GIT_REMOTE_TIMEOUT_SECONDS = 600.0
# The variable each setting falls back to when no flag gives it.
ENVIRONMENT_VARIABLES = {
    ReplicaEnv.role: "role",
    ReplicaEnv.engine: "engine",
    ReplicaEnv.model: "model",
    ReplicaEnv.ollama_host: "ollama_host",
    ReplicaEnv.ollama_num_ctx: "ollama_num_ctx",
    ReplicaEnv.ollama_num_parallel: "ollama_parallel",
    ReplicaEnv.scratch_dir: "scratch_dir",
    ReplicaEnv.archive_max_entries: "archive_max_entries",
    ReplicaEnv.archive_max_bytes: "archive_max_bytes",
    ReplicaEnv.git_timeout_seconds: "git_timeout_seconds",
}


def default_scratch_dir() -> Path:
    """The user's own cache directory ($XDG_CACHE_HOME, else ~/.cache), not the shared /tmp."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "tars-selfcoding" / "scratch"


class ConfigurationError(RuntimeError):
    """What a replica was started with (flags, environment) cannot be used."""


class ReplicaSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Role | None = None
    engine: EngineName = EngineName.static
    model: str = DEFAULT_MODEL
    ollama_host: str = DEFAULT_OLLAMA_HOST
    ollama_connect_timeout_seconds: float = Field(default=5, gt=0)
    # One context length for every request of a run, so Ollama never reloads the model;
    # capped by the model's own. 8k is where small models stop losing truncated prompts.
    ollama_num_ctx: int = Field(default=8192, ge=2048)
    # Requests in flight at once: the server's OLLAMA_NUM_PARALLEL, when set alike here.
    ollama_parallel: int = Field(default=1, ge=1, le=64)
    ollama_keep_alive: str = "10m"
    scratch_dir: Path = Field(default_factory=default_scratch_dir)
    archive_max_entries: int = Field(default=DEFAULT_MAX_ENTRIES, ge=1)
    archive_max_bytes: int = Field(default=DEFAULT_MAX_EXTRACTED_BYTES, ge=1)
    # A clone of a large repository over a slow link takes minutes; a silent server, forever.
    git_timeout_seconds: float = Field(default=DEFAULT_GIT_REMOTE_TIMEOUT_SECONDS, gt=0)

    @field_validator("ollama_host")
    @classmethod
    def _ollama_host_as_url(cls, host: str) -> str:
        return normalize_ollama_host(host)

    @classmethod
    def from_env(cls, **overrides: object) -> ReplicaSettings:
        """Settings from TARS_* / OLLAMA_HOST variables; explicit overrides (not None) win."""
        values: dict[str, object] = {
            field: os.environ[variable]
            for variable, field in ENVIRONMENT_VARIABLES.items()
            if os.environ.get(variable)
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls.model_validate(values)

    @property
    def archive_limits(self) -> ArchiveLimits:
        return ArchiveLimits(max_entries=self.archive_max_entries, max_bytes=self.archive_max_bytes)

    def role_info(self, role: Role, capabilities: list[str]) -> RoleInfo:
        """What a replica of `role` running with these settings reports on /info."""
        return RoleInfo(
            role=role,
            engine=self.engine,
            model=self.model,
            capabilities=capabilities,
            version=ENGINE_VERSION,
        )


def private_dir(path: Path) -> Path:
    """`path` as a directory only its owner, this user, can enter (0700).

    A directory someone else owns is refused: what it holds could have been put there
    by them.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    status = path.lstat()
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.getuid():
        raise ConfigurationError(f"{path} is not a directory of this user ({os.getuid()})")
    if stat.S_IMODE(status.st_mode) != 0o700:
        path.chmod(0o700)
    return path


def normalize_ollama_host(host: str) -> str:
    """OLLAMA_HOST is often given as `host:port`; the client wants a URL."""
    host = host.strip().rstrip("/")
    if "://" not in host:
        host = f"http://{host}"
    return host
