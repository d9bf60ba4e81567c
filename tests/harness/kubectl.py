"""Names shared by the control-plane fixtures and the tests that use them.

They live here rather than in conftest.py: every test directory has a conftest
module of its own, so `from conftest import ...` would find whichever was loaded last.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Protocol

REPOSITORY = Path(__file__).resolve().parents[2]
# A bound on waits for the cluster to act, so that a broken cluster fails instead of hanging.
SETTLE_SECONDS = 120


class Kubectl(Protocol):
    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, as_user: str | None = None
    ) -> subprocess.CompletedProcess[str]: ...
