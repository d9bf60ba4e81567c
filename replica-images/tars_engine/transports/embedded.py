"""The embedded default: the workflow on this machine with the roles in-process.

A local run keeps its state in `<project>/.tars/` (git is told to ignore it
through .git/info/exclude, so the run never dirties the repository) and its
learning in the per-user store (see `tars_engine.core.learning`), unless the run's
options keep it out of learning. Engine choice:
`ollama` when OLLAMA_HOST is set and answers, else `static`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from tars_api.vocabulary import EngineName

from tars_engine.core.events import EventCallback
from tars_engine.core.learning import LearningStore, user_learning_store
from tars_engine.core.role_pool import WorkerRoles
from tars_engine.core.selection import is_git_repository
from tars_engine.core.settings import ReplicaSettings, normalize_ollama_host
from tars_engine.core.state import RunOptions, StateStore
from tars_engine.core.workflow import Workflow
from tars_engine.roles.tester import detect_test_command

STATE_DIR_NAME = ".tars"
# Two of each role keep both cores busy: the baseline runs alongside the first batch.
DEFAULT_INSTANCES = 2
OLLAMA_PROBE_TIMEOUT_SECONDS = 2.0
PROJECT_VENV_NAMES = (".venv", "venv")


def state_dir_for(root: Path) -> Path:
    return root / STATE_DIR_NAME


def exclude_state_dir(root: Path) -> None:
    """Add `.tars/` to .git/info/exclude once, so git never lists the run's own files."""
    if not is_git_repository(root):
        return
    git_dir = root / ".git"
    if not git_dir.is_dir():
        return  # a worktree or submodule: .git is a file; the run's files then show as untracked
    exclude = git_dir / "info" / "exclude"
    line = f"/{STATE_DIR_NAME}/"
    existing = exclude.read_text(encoding="utf-8") if exclude.is_file() else ""
    if line in existing.splitlines():
        return
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with exclude.open("a", encoding="utf-8") as handle:
        if existing and not existing.endswith("\n"):
            handle.write("\n")
        handle.write(f"{line}\n")


def ollama_reachable(host: str | None = None) -> bool:
    host = host or os.environ.get("OLLAMA_HOST")
    if not host:
        return False
    # Imported here, as the roles are in local_workflow: the CLI imports this module
    # for every command, and only a run needs them.
    import httpx

    try:
        response = httpx.get(
            f"{normalize_ollama_host(host)}/api/tags", timeout=OLLAMA_PROBE_TIMEOUT_SECONDS
        )
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def project_test_command(root: Path) -> list[str] | None:
    """pytest from the project's own virtualenv, when it has one with pytest in it.

    A project's test dependencies live in its own environment, not in the one
    TARS runs from; without this, a project whose tests import anything beyond the
    standard library would fail its baseline under TARS's interpreter.
    """
    if detect_test_command(root) is None:
        return None
    for name in PROJECT_VENV_NAMES:
        python = root / name / "bin" / "python"
        if not python.is_file():
            continue
        probe = subprocess.run(
            [str(python), "-c", "import pytest"], capture_output=True, check=False, timeout=60
        )
        if probe.returncode == 0:
            return [str(python), "-m", "pytest", "-q"]
    return None


def ollama_problem(host: str, model: str) -> str | None:
    """Why `model` on the Ollama server at `host` cannot serve a run, in one line; None: it can.

    The same checks as the run's preflight, less the speed probe, so a command can refuse
    before it starts any work.
    """
    from tars_engine.roles.ollama_client import OllamaClient, OllamaError

    try:
        OllamaClient(normalize_ollama_host(host)).check_model(model)
    except OllamaError as exc:
        return str(exc)
    return None


def default_engine() -> EngineName:
    return EngineName.ollama if ollama_reachable() else EngineName.static


def local_workflow(
    root: Path,
    options: RunOptions,
    *,
    instances: int = DEFAULT_INSTANCES,
    state_dir: Path | None = None,
    learning: LearningStore | None = None,
    on_event: EventCallback | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> Workflow:
    """A workflow over `root` with `instances` in-process copies of each role.

    It learns in `learning`, else in the per-user store, unless its options keep it out
    of learning: then no store is opened at all.
    """
    from tars_engine.transports.in_process import local_roles

    settings = ReplicaSettings.from_env(engine=options.engine, model=options.model)
    roles = WorkerRoles.of(local_roles(settings) for _ in range(instances))
    workflow = Workflow(
        root,
        options,
        roles,
        store=StateStore(state_dir or state_dir_for(root.resolve())),
        learning=(learning or user_learning_store()) if options.learning else None,
        on_event=on_event,
        stop_requested=stop_requested,
    )
    exclude_state_dir(workflow.root)
    return workflow
