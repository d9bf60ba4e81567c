"""The words the API's specs are written in: roles, engines, and the defaults of a run.

They live here, at the bottom of the project, because a TarsReplica's `spec.role` and a
SelfCodingRun's `spec.engine` are API fields; the engine and the operator import them.
"""

from __future__ import annotations

import enum

DEFAULT_MODEL = "llama3"
# How long one run of a project's tests may take unless a run says otherwise.
DEFAULT_TEST_TIMEOUT_SECONDS = 600


class Role(str, enum.Enum):
    analyzer = "analyzer"
    generator = "generator"
    tester = "tester"
    coordinator = "coordinator"


WORKER_ROLES: tuple[Role, ...] = (Role.analyzer, Role.generator, Role.tester)


class EngineName(str, enum.Enum):
    static = "static"
    ollama = "ollama"


class SandboxMode(str, enum.Enum):
    """How a test run is isolated from the machine it runs on (bubblewrap)."""

    auto = "auto"
    """bwrap when it works here; otherwise the run goes on and says it is unsandboxed."""
    required = "required"
    """No test runs without bwrap."""
    off = "off"


# A variable a run passes on to its tests by name (spec.testEnv, --test-env).
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
