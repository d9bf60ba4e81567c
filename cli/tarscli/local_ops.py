"""The workflow on this machine, for the commands that run it without a cluster.

Which project a local run works on, the run's options from the command's (the engine
chosen, the project's test command found), running the workflow with its roles
in-process (tars_engine.transports.embedded) behind live progress, the run's persisted
state, and the demo on a copy of the bundled sample project. What is shown comes from
tarscli.views; failures a user can act on are CliErrors with one line.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from tars_api.run import RunPhase
from tars_api.vocabulary import ENV_NAME_PATTERN, EngineName, SandboxMode
from tars_engine.core.budget import Budget
from tars_engine.core.gating import describe_failure
from tars_engine.core.learning import LearningError, LearningStore
from tars_engine.core.models import TestRequest
from tars_engine.core.settings import DEFAULT_OLLAMA_HOST
from tars_engine.core.snapshot import pack_project
from tars_engine.core.state import RunOptions, StateError, StateStore, WorkflowState
from tars_engine.core.workflow_errors import WorkflowError
from tars_engine.roles.sandbox import find_bwrap
from tars_engine.roles.tester import Tester
from tars_engine.transports.embedded import (
    default_engine,
    local_workflow,
    ollama_problem,
    project_test_command,
    state_dir_for,
)

from tarscli import views
from tarscli.errors import CliError
from tarscli.options import WorkflowChoices
from tarscli.upload import git_toplevel, project_root

SAMPLE_PROJECT_ENV = "TARS_SAMPLE_PROJECT"
DEMO_TEST_TIMEOUT_SECONDS = 300
# The demo's own test runs, before and after, keep their snapshots under this run id.
DEMO_RUN_ID = "demo"
# What asks a local run to stop after its current step: Ctrl-C, and `kill` or a service
# manager's stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", "tox.ini", "pytest.ini")

# --- a run's project and options ----------------------------------------------------------------


def _marked_project(start: Path) -> Path | None:
    """The nearest directory at or above `start` that holds a Python project's configuration."""
    for directory in (start, *start.parents):
        if any((directory / marker).is_file() for marker in PROJECT_MARKERS):
            return directory
    return None


def local_project_root(cwd: Path, targets: list[str]) -> Path:
    """The project a local run works on.

    The git top level around the working directory; else the git top level around
    the first target; else, outside git, the nearest directory above the first
    target with a pyproject.toml (or setup.py, setup.cfg, tox.ini, pytest.ini); else cwd.
    """
    toplevel = git_toplevel(cwd)
    root = toplevel or cwd.resolve()
    if toplevel is not None or not targets:
        return root
    first = Path(targets[0]) if Path(targets[0]).is_absolute() else cwd / targets[0]
    if not first.exists():
        return root
    start = (first if first.is_dir() else first.parent).resolve()
    return git_toplevel(start) or _marked_project(start) or root


def choose_engine(requested: EngineName | None, model: str) -> EngineName:
    """The engine a run uses; `--engine ollama` with a server or model that cannot serve
    the run is refused here, in one line, before any work."""
    host = os.environ.get("OLLAMA_HOST") or DEFAULT_OLLAMA_HOST
    if requested is None:
        # Chosen for the user: the model must be there too, or the static engine runs.
        engine = default_engine()
        if engine is EngineName.ollama and ollama_problem(host, model):
            return EngineName.static
        return engine
    if requested is EngineName.ollama:
        # One look at the server: its own message names what to do when it is not there.
        problem = ollama_problem(host, model)
        if problem:
            raise CliError(f"--engine ollama: {problem}")
    return requested


def parse_test_command(command: str | None) -> list[str] | None:
    if command is None:
        return None
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise CliError(f"--test-command is not a valid command line: {exc}") from exc
    if not argv:
        raise CliError("--test-command must not be empty")
    return argv


def check_sandbox(mode: SandboxMode) -> None:
    """`--sandbox required` on a machine where bwrap cannot run is refused before any work."""
    if mode is SandboxMode.required:
        bwrap, where = find_bwrap(os.environ.get("PATH"))
        if bwrap is None:
            raise CliError(f"--sandbox required: {where}")


def env_names(names: list[str] | None) -> list[str]:
    """`--test-env` names, each refused in one line unless it can name a variable."""
    for name in names or []:
        if not re.fullmatch(ENV_NAME_PATTERN, name):
            raise CliError(f"--test-env {name!r} is not a variable name")
    return names or []


def check_test_env(names: list[str] | None) -> list[str]:
    """The variables a local run passes on to its tests: each a name, and set here."""
    for name in env_names(names):
        if name not in os.environ:
            raise CliError(f"--test-env {name}: not set in this environment")
    return names or []


def run_options(
    root: Path, targets: list[str], choices: WorkflowChoices, budget: Budget | None = None
) -> RunOptions:
    """A local run's options: the engine chosen and the project's test command found when not given."""
    check_sandbox(choices.sandbox)
    return RunOptions(
        targets=targets,
        auto_apply=choices.auto_apply,
        engine=choose_engine(choices.engine, choices.model),
        model=choices.model,
        allow_unsafe_fixes=choices.unsafe_fixes,
        test_command=parse_test_command(choices.test_command) or project_test_command(root),
        test_timeout_seconds=choices.test_timeout,
        sandbox=choices.sandbox,
        test_env=check_test_env(choices.test_env),
        test_network=choices.test_network,
        budget=budget or Budget(),
        learning=not choices.no_learning,
    )


# --- running ------------------------------------------------------------------------------------


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM set `stop` instead of raising where the main thread is.

    A KeyboardInterrupt can land anywhere, in the middle of the code that hands the run's
    outcome over or shows it; a handler that only sets an event cannot.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda _signum, _frame: stop.set())
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def execute(
    root: Path, options: RunOptions, console: Console, learning: LearningStore | None = None
) -> WorkflowState:
    """Run the workflow with live progress; Ctrl-C or SIGTERM ask it to stop after the current step."""
    stop = threading.Event()
    with views.LiveView(console) as view, stop_on_signals(stop):
        try:
            workflow = local_workflow(
                root, options, on_event=view, stop_requested=stop.is_set, learning=learning
            )
        except (WorkflowError, LearningError) as exc:
            raise CliError(str(exc)) from exc
        if workflow.learning is not None and workflow.learning.set_aside is not None:
            typer.echo(f"warning: {workflow.learning.set_aside.warning}", err=True)
        outcome: list[WorkflowState | BaseException] = []
        finished = threading.Event()

        def drive() -> None:
            try:
                outcome.append(workflow.run())
            # Handed to the main thread, which reports it or re-raises it there.
            except BaseException as exc:  # noqa: BLE001
                outcome.append(exc)
            finally:
                finished.set()

        worker = threading.Thread(target=drive, name="tars-workflow")
        worker.start()
        announced = False
        while not finished.wait(0.2):
            if stop.is_set() and not announced:
                announced = True
                console.print("[yellow]stopping after the current step (accepted work is kept)…[/]")
        worker.join()
    result = outcome[0]
    if isinstance(result, StateError):
        raise CliError(str(result)) from result
    if isinstance(result, OSError):
        raise CliError(f"cannot keep the run's state in {root / '.tars'}: {result}") from result
    if isinstance(result, BaseException):
        raise result
    return result


def saved_run(project: Path | None) -> tuple[Path, StateStore, WorkflowState | None]:
    """The project around `project` (else the working directory), its state store and run."""
    root = project_root(project or Path.cwd())
    store = StateStore(state_dir_for(root))
    try:
        return root, store, store.load()
    except StateError as exc:
        raise CliError(str(exc)) from exc


# --- the demo -----------------------------------------------------------------------------------


def sample_project() -> Path:
    """The bundled sample project: $TARS_SAMPLE_PROJECT when set, else examples/ of this source tree."""
    explicit = os.environ.get(SAMPLE_PROJECT_ENV)
    candidate = (
        Path(explicit)
        if explicit
        else Path(__file__).resolve().parents[2] / "examples" / "sample-project"
    )
    if (candidate / "pyproject.toml").is_file():
        return candidate
    if explicit:
        raise CliError(
            f"{SAMPLE_PROJECT_ENV}={explicit} is not the sample project (no pyproject.toml)"
        )
    raise CliError(
        "the sample project is not found (this installation has no examples/ directory); "
        f"set {SAMPLE_PROJECT_ENV} to a copy of examples/sample-project"
    )


def _captured(argv: list[str], **settings: Any) -> subprocess.CompletedProcess[str]:
    """Run a command for its text output; the caller judges its exit status."""
    return subprocess.run(argv, capture_output=True, text=True, check=False, **settings)


def _git(root: Path, *arguments: str) -> str:
    completed = _captured(["git", "-C", str(root), *arguments], timeout=120)
    if completed.returncode != 0:
        raise CliError(f"git {arguments[0]} failed in {root}: {completed.stderr.strip()}")
    return completed.stdout


def run_project_tests(root: Path, console: Console, when: str) -> None:
    """The sample project's own tests, run the way the workflow runs them: by the tester,
    on a snapshot, in its sandbox."""
    tester = Tester()
    snapshot = tester.put_snapshot(DEMO_RUN_ID, pack_project(root))
    result = tester.run_tests(
        TestRequest(snapshot=snapshot, candidates=[], timeout_seconds=DEMO_TEST_TIMEOUT_SECONDS)
    )
    if not result.passed:
        raise CliError(f"the sample project's tests fail {when}: {describe_failure(result)}")
    held = result.sandbox.detail if result.sandbox else "no sandbox"
    console.print(
        f"[green]✔ tests {when}:[/] {result.executed} passed in {result.duration_seconds:.1f}s ({held})"
    )


def sample_demo(console: Console, *, keep: bool, engine: EngineName | None, model: str) -> None:
    """Copy the sample project into a temporary git repository and improve it with auto-apply.

    Shows the tests green before, every stage of the run, the diff and the statistics,
    and the tests green after.
    """
    source = sample_project()
    workspace = Path(tempfile.mkdtemp(prefix="tars-demo-"))
    root = workspace / source.name
    try:
        shutil.copytree(
            source, root, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", ".tars")
        )
        _git(workspace, "init", "--quiet", str(root))
        _git(root, "add", "--all")
        _git(
            root, "-c", "user.name=TARS demo", "-c", "user.email=demo@localhost",
            "-c", "commit.gpgsign=false", "commit", "--quiet", "-m", "Sample project as shipped",
        )  # fmt: skip
        start = _git(root, "rev-parse", "HEAD").strip()
        console.rule("TARS self-coding demo")
        console.print(f"Sample project copied to {root} (a fresh git repository).", markup=False)
        run_project_tests(root, console, "before")
        options = RunOptions(
            targets=["ledgerly"],
            auto_apply=True,
            engine=choose_engine(engine, model),
            model=model,
            test_timeout_seconds=DEMO_TEST_TIMEOUT_SECONDS,
        )
        console.print(f"Running the workflow with auto-apply, engine {options.engine.value}…")
        with tempfile.TemporaryDirectory(prefix="tars-demo-learning-") as learning_dir:
            # The demo learns in its own store: showing it must not teach the user's.
            learning = LearningStore(Path(learning_dir) / "learning.sqlite3")
            state = execute(root, options, console, learning)
        console.rule("What changed")
        # Imported here: rich.syntax brings pygments, which only the demo's diff needs.
        from rich.syntax import Syntax

        diff = (
            _git(root, "diff", "--stat", start, "HEAD") + "\n" + _git(root, "diff", start, "HEAD")
        )
        console.print(Syntax(diff, "diff", theme="ansi_dark", word_wrap=True))
        console.print(
            _git(root, "log", "--oneline", f"{start}..HEAD"), markup=False, highlight=False
        )
        console.rule("Statistics")
        views.render_state(state, console, show_location=keep)
        run_project_tests(root, console, "after")
        if state.phase is not RunPhase.succeeded:
            raise CliError(f"the demo run did not succeed: {state.message}")
        if not state.applied:
            raise CliError("the demo run applied no improvement")
        console.print(f"[bold green]{len(state.applied)} improvements applied, tests green.[/]")
    finally:
        if keep:
            console.print(f"The demo repository is kept at {root}", markup=False)
        else:
            shutil.rmtree(workspace, ignore_errors=True)
