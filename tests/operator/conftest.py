"""The `operator` fixture: a `tars-operator` subprocess watching the test's namespace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.operator_process import OperatorProcess


@pytest.fixture
def operator(
    kubeconfig: Path, namespace: str, tars_crds: list[str], tmp_path: Path
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(kubeconfig, namespace, tmp_path)
    process.start()
    try:
        yield process
    finally:
        process.stop()
        # pytest shows this only for a failing test: the operator's side of the story.
        print(f"--- {process.log_path}\n{process.log()}")
