"""Replica settings: flags fall back to environment variables, then to defaults.

The scratch directory is the only place a replica writes to, so the replica runs
on a read-only root filesystem with one writable volume mounted there.
"""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tars_engine.models import EngineName, Role, RoleInfo

ENGINE_VERSION = importlib.metadata.version("tars-selfcoding")
DEFAULT_MODEL = "llama3"
DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"


class ConfigurationError(RuntimeError):
    """What a replica was started with (flags, environment) cannot be used."""


class ReplicaSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Role | None = None
    engine: EngineName = EngineName.static
    model: str = DEFAULT_MODEL
    ollama_host: str = DEFAULT_OLLAMA_HOST
    ollama_timeout_seconds: float = Field(default=120, gt=0)
    ollama_connect_timeout_seconds: float = Field(default=5, gt=0)
    max_context_tokens: int = Field(default=32768, ge=2048)
    scratch_dir: Path = Field(default_factory=lambda: Path(tempfile.gettempdir()) / "tars-scratch")

    @classmethod
    def from_env(cls, **overrides: object) -> ReplicaSettings:
        """Settings from TARS_* / OLLAMA_HOST variables; explicit overrides (not None) win."""
        values: dict[str, object] = {}
        env = os.environ
        if env.get("TARS_ROLE"):
            values["role"] = env["TARS_ROLE"]
        if env.get("TARS_ENGINE"):
            values["engine"] = env["TARS_ENGINE"]
        if env.get("TARS_MODEL"):
            values["model"] = env["TARS_MODEL"]
        if env.get("OLLAMA_HOST"):
            values["ollama_host"] = normalize_ollama_host(env["OLLAMA_HOST"])
        if env.get("TARS_OLLAMA_TIMEOUT"):
            values["ollama_timeout_seconds"] = env["TARS_OLLAMA_TIMEOUT"]
        if env.get("TARS_SCRATCH_DIR"):
            values["scratch_dir"] = env["TARS_SCRATCH_DIR"]
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls.model_validate(values)

    def role_info(self, role: Role, capabilities: list[str]) -> RoleInfo:
        """What a replica of `role` running with these settings reports on /info."""
        return RoleInfo(
            role=role,
            engine=self.engine,
            model=self.model,
            capabilities=capabilities,
            version=ENGINE_VERSION,
        )


def normalize_ollama_host(host: str) -> str:
    """OLLAMA_HOST is often given as `host:port`; the client wants a URL."""
    host = host.strip().rstrip("/")
    if "://" not in host:
        host = f"http://{host}"
    return host
