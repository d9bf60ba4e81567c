"""`tarscli self-code setup` reports whether the generator's Ollama server has the model:
asked of the generator replica's pod (a container on the node) through the API server's
service proxy, answered by the real server with the real test model at the node's address."""

from __future__ import annotations

from tests.harness.e2e import SETUP_TIMEOUT_SECONDS, Workspace
from tests.harness.ollama import TEST_MODEL


def test_setup_reports_the_model_ready_or_what_is_missing(ollama_workspace: Workspace) -> None:
    ready = ollama_workspace.tarscli("self-code", "setup", "--timeout", SETUP_TIMEOUT_SECONDS)
    assert f"Model {TEST_MODEL} is ready on Ollama 0.17.4: context " in ready.stdout
    assert "tokens/s." in ready.stdout
    assert "warning" not in ready.stderr

    # Static runs still work without the model: a warning, not a failed setup.
    missing = ollama_workspace.tarscli(
        "self-code", "setup", "--model", "no-such-model:1b", "--timeout", SETUP_TIMEOUT_SECONDS
    )
    warnings = [line for line in missing.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, missing.stderr
    assert "no-such-model:1b" in warnings[0]
    assert "static runs are unaffected" in warnings[0]
