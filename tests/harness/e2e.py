"""What the end-to-end tests share: `tarscli` bound to a namespace, the sample project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.kubectl import REPOSITORY
from tests.harness.operator_process import OperatorProcess
from tests.harness.tools import run_tool

TARSCLI = Path(sys.executable).parent / "tarscli"
SAMPLE_PROJECT = REPOSITORY / "examples" / "sample-project"
COMMAND_TIMEOUT_SECONDS = 300
SETUP_TIMEOUT_SECONDS = "180"


def project_tests(project: Path) -> subprocess.CompletedProcess[str]:
    """The project's own tests, run with this interpreter (the sample project needs no more)."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )


@dataclass
class Workspace:
    """A namespace with an operator watching it, and `tarscli` bound to both."""

    kubeconfig: Path
    namespace: str
    operator: OperatorProcess

    def tarscli(
        self, *args: str, cwd: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = [str(TARSCLI), *args, "--kubeconfig", str(self.kubeconfig), "-n", self.namespace]
        return run_tool(
            command,
            check=check,
            cwd=cwd,
            env={**os.environ, "COLUMNS": "200"},
            timeout=COMMAND_TIMEOUT_SECONDS,
        )

    def kubectl_json(self, kubectl: Callable[..., Any], *args: str) -> Any:
        return json.loads(kubectl("get", *args, "-n", self.namespace, "-o", "json").stdout)
