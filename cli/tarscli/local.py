"""The workflow on this machine: `self-code run`, `self-code improve`, `self-code status --local`
and `demo self-code-demo`.

The roles run in-process (tars_engine.transports.embedded); this module only turns options
into a run, shows its events live and renders its persisted state.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Self

import typer
from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.syntax import Syntax
from rich.table import Table
from tars_api.run import FileOutcome, RunPhase
from tars_api.vocabulary import DEFAULT_MODEL, EngineName
from tars_engine.core.budget import Budget
from tars_engine.core.events import EventKind, WorkflowEvent
from tars_engine.core.learning import LearningStore
from tars_engine.core.settings import DEFAULT_OLLAMA_HOST
from tars_engine.core.state import (
    DEFAULT_TEST_TIMEOUT_SECONDS,
    RunOptions,
    StateError,
    StateStore,
    WorkflowState,
)
from tars_engine.core.validation import is_test_file
from tars_engine.core.workflow_errors import WorkflowError
from tars_engine.transports.embedded import (
    default_engine,
    local_workflow,
    ollama_reachable,
    project_test_command,
    state_dir_for,
)

from tarscli import output
from tarscli.errors import CliError
from tarscli.upload import git_toplevel, project_root, resolve_targets

EXIT_STOPPED = 130
SAMPLE_PROJECT_ENV = "TARS_SAMPLE_PROJECT"
DEMO_TEST_TIMEOUT_SECONDS = 300
PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", "tox.ini", "pytest.ini")
_OUTCOME_STYLE = {
    FileOutcome.applied: "green",
    FileOutcome.accepted: "green",
    FileOutcome.rejected: "yellow",
    FileOutcome.failed: "red",
    FileOutcome.skipped: "dim",
}

EngineOption = Annotated[
    EngineName | None,
    typer.Option(
        "--engine",
        help="static (ruff's fixes) or ollama (a local model). "
        "Default: ollama when OLLAMA_HOST answers, else static.",
        case_sensitive=False,
        show_default=False,
    ),
]
ModelOption = Annotated[str, typer.Option("--model", help="Model for the ollama engine.")]
AutoApplyOption = Annotated[
    bool,
    typer.Option(
        "--auto-apply",
        "-a",
        help="Commit each accepted improvement (git repositories only); "
        "without it the run writes a reviewable patch.",
    ),
]
TestCommandOption = Annotated[
    str | None,
    typer.Option(
        "--test-command",
        help="The project's test command (default: pytest when the project uses it).",
        show_default=False,
    ),
]
TestTimeoutOption = Annotated[
    float,
    typer.Option(
        "--test-timeout", min=1, help="Seconds one test run may take before it is killed."
    ),
]
UnsafeOption = Annotated[
    bool,
    typer.Option(
        "--unsafe-fixes", help="Also use ruff's unsafe fixes (still proven by the tests)."
    ),
]


# --- running -----------------------------------------------------------------------------


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


def choose_engine(requested: EngineName | None) -> EngineName:
    if requested is None:
        return default_engine()
    host = os.environ.get("OLLAMA_HOST") or DEFAULT_OLLAMA_HOST
    if requested is EngineName.ollama and not ollama_reachable(host):
        raise CliError(
            f"--engine ollama: no Ollama server answers at {host}; start one, set OLLAMA_HOST, "
            "or use --engine static"
        )
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


def run_options(
    root: Path,
    targets: list[str],
    *,
    auto_apply: bool,
    engine: EngineName | None,
    model: str,
    unsafe_fixes: bool,
    test_command: str | None,
    test_timeout: float,
    budget: Budget | None = None,
) -> RunOptions:
    """A local run's options: the engine chosen and the project's test command found when not given."""
    return RunOptions(
        targets=targets,
        auto_apply=auto_apply,
        engine=choose_engine(engine),
        model=model,
        allow_unsafe_fixes=unsafe_fixes,
        test_command=parse_test_command(test_command) or project_test_command(root),
        test_timeout_seconds=test_timeout,
        budget=budget or Budget(),
    )


class LiveView:
    """The run's live progress: a line per stage and per finished file, a bar for the files."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[stage]:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[current]}"),
            console=console,
            transient=True,
        )
        self.task: TaskID = self.progress.add_task("run", total=None, stage="Starting", current="")
        self._stage = ""

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def __call__(self, event: WorkflowEvent) -> None:
        stage = event.stage.value
        if stage != self._stage and event.kind is not EventKind.finished:
            self._stage = stage
            self.console.print(
                f"[bold cyan]▸ {stage}[/]" + (f"  {event.message}" if event.message else "")
            )
        elif event.kind is EventKind.stage and event.message:
            self.console.print(f"  {event.message}")
        if event.kind is EventKind.tested and event.message:
            self.console.print(
                f"  [dim]test run {event.statistics.test_runs}:[/] {event.message}", highlight=False
            )
        if event.kind in (EventKind.file, EventKind.file_done) and event.path and event.message:
            self.console.print(f"  {event.path}: {event.message}", markup=False, highlight=False)
        self.progress.update(
            self.task,
            total=event.files_total or None,
            completed=event.files_done,
            stage=stage,
            current=event.current_file or "",
        )


def execute(
    root: Path, options: RunOptions, console: Console, learning: LearningStore | None = None
) -> WorkflowState:
    """Run the workflow with live progress; Ctrl-C asks it to stop after the current step."""
    stop = threading.Event()
    with LiveView(console) as view:
        try:
            workflow = local_workflow(
                root, options, on_event=view, stop_requested=stop.is_set, learning=learning
            )
        except WorkflowError as exc:
            raise CliError(str(exc)) from exc
        outcome: dict[str, WorkflowState | BaseException] = {}

        def drive() -> None:
            try:
                outcome["state"] = workflow.run()
            # Handed to the main thread, which reports it or re-raises it there.
            except BaseException as exc:  # noqa: BLE001
                outcome["error"] = exc

        worker = threading.Thread(target=drive, name="tars-workflow")
        worker.start()
        while worker.is_alive():
            try:
                worker.join(0.2)
            except KeyboardInterrupt:
                stop.set()
                console.print("[yellow]stopping after the current step (accepted work is kept)…[/]")
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, StateError):
            raise CliError(str(error)) from error
        if isinstance(error, OSError):
            raise CliError(f"cannot keep the run's state in {root / '.tars'}: {error}") from error
        raise error  # type: ignore[misc]
    state = outcome["state"]
    assert isinstance(state, WorkflowState)
    return state


def results_table(state: WorkflowState) -> Table:
    table = output.table("FILE", "OUTCOME", "ATTEMPTS", "RULES", "DETAIL", title="Files")
    for record in state.files:
        outcome = record.outcome.value if record.outcome else "Pending"
        style = _OUTCOME_STYLE.get(record.outcome, "") if record.outcome else ""
        table.add_row(
            record.path,
            f"[{style}]{outcome}[/]" if style else outcome,
            str(record.attempts),
            ", ".join(record.rules) or "-",
            output.text(record.message),
        )
    return table


def statistics_table(state: WorkflowState) -> Table:
    statistics = state.statistics
    table = output.table(
        "FILES", "PROCESSED", "FAILED", "PROPOSED", "ACCEPTED", "APPLIED", "TEST RUNS",
        "RUNS/ACCEPTED", title="Statistics",
    )  # fmt: skip
    accepted = statistics.improvements_accepted
    table.add_row(
        *(
            str(value)
            for value in (
                statistics.files_total,
                statistics.files_processed,
                statistics.files_failed,
                statistics.improvements_proposed,
                accepted,
                statistics.improvements_applied,
                statistics.test_runs,
                f"{statistics.test_runs / accepted:.2f}" if accepted else "-",
            )
        )
    )
    return table


def skipped_table(state: WorkflowState) -> Table:
    table = output.table("SKIPPED FILE", "REASON", "DETAIL")
    for skipped in state.skipped:
        table.add_row(skipped.path, skipped.reason.value, output.text(skipped.detail))
    return table


def where_the_work_is(state: WorkflowState) -> str:
    root = state.project_root
    if state.options.auto_apply:
        if not state.applied:
            return "No commits were made."
        commits = [change.commit for change in state.applied if change.commit]
        return (
            f"{len(commits)} commits in {root} — review with: git -C {shlex.quote(root)} "
            f"log -p -{len(commits)}"
        )
    if state.patch_path:
        return (
            f"Patch with {len(state.accepted)} improvements: {state.patch_path} — apply with: "
            f"git -C {shlex.quote(root)} apply {shlex.quote(state.patch_path)}"
        )
    return "No improvement passed the tests; nothing to apply."


def render_state(state: WorkflowState, console: Console, *, show_location: bool = True) -> None:
    rows = [
        ("Run", state.run_id),
        ("Project", state.project_root),
        ("Targets", ", ".join(state.options.targets)),
        ("Engine", state.options.engine.value
         + (f" (model {state.options.model})" if state.options.engine is EngineName.ollama else "")),
        ("Phase", state.phase.value),
        ("Stage", state.stage.value),
        ("Progress", state.progress),
        ("Current file", output.text(state.current_file)),
        ("Started", output.timestamp(state.started_at)),
        ("Completed", output.timestamp(state.completed_at)),
        ("Message", output.text(state.message)),
    ]  # fmt: skip
    parts: list[Table] = [output.summary(rows), statistics_table(state)]
    if state.files:
        parts.append(results_table(state))
    if state.skipped:
        parts.append(skipped_table(state))
    console.print(Group(*parts))
    if show_location:
        console.print(where_the_work_is(state), markup=False, highlight=False)


def finish(state: WorkflowState, console: Console) -> None:
    """Show the outcome; a run that did not succeed exits non-zero with its reason on one line."""
    render_state(state, console)
    if state.phase is RunPhase.stopped:
        console.print(f"Stopped: {state.message}. Run the same command again to resume.")
        raise typer.Exit(EXIT_STOPPED)
    if state.phase is not RunPhase.succeeded:
        raise CliError(state.message)


def run(
    targets: Annotated[
        list[str],
        typer.Option(
            "--target", "-t", help="Directory to improve (repeatable), inside the project."
        ),
    ],
    auto_apply: AutoApplyOption = False,
    engine: EngineOption = None,
    model: ModelOption = DEFAULT_MODEL,
    max_files: Annotated[
        int | None,
        typer.Option("--max-files", min=1, help="Work on at most N files.", show_default=False),
    ] = None,
    max_attempts: Annotated[
        int, typer.Option("--max-attempts", min=1, max=10, help="Attempts per file.")
    ] = 2,
    deadline: Annotated[
        float | None,
        typer.Option(
            "--deadline", min=1, help="Seconds before the run gives up.", show_default=False
        ),
    ] = None,
    test_command: TestCommandOption = None,
    test_timeout: TestTimeoutOption = DEFAULT_TEST_TIMEOUT_SECONDS,
    unsafe_fixes: UnsafeOption = False,
) -> None:
    """Run the whole workflow on this machine (roles in-process), with live progress.

    State lives in PROJECT/.tars/ (workflow-state.json); a stopped run resumes when
    the same command runs again.
    """
    cwd = Path.cwd()
    root = local_project_root(cwd, targets)
    relative = resolve_targets(root, cwd, targets)
    options = run_options(
        root,
        relative,
        auto_apply=auto_apply,
        engine=engine,
        model=model,
        unsafe_fixes=unsafe_fixes,
        test_command=test_command,
        test_timeout=test_timeout,
        budget=Budget(
            max_files=max_files, max_attempts_per_file=max_attempts, deadline_seconds=deadline
        ),
    )
    console = output.console()
    finish(execute(root, options, console), console)


def improve(
    file: Annotated[Path, typer.Argument(help="The Python file to improve.", show_default=False)],
    auto_apply: AutoApplyOption = False,
    engine: EngineOption = None,
    model: ModelOption = DEFAULT_MODEL,
    test_command: TestCommandOption = None,
    test_timeout: TestTimeoutOption = DEFAULT_TEST_TIMEOUT_SECONDS,
    unsafe_fixes: UnsafeOption = False,
) -> None:
    """Improve one file with the same pipeline: analyze, generate, prove with the tests, apply."""
    cwd = Path.cwd()
    location = (file if file.is_absolute() else cwd / file).resolve()
    if not location.is_file():
        raise CliError(f"{file} is not a file")
    if location.suffix != ".py":
        raise CliError(f"{file} is not a Python file")
    root = local_project_root(location.parent, [str(location)])
    if not location.is_relative_to(root):
        raise CliError(f"{file} is outside the project {root}")
    relative = location.relative_to(root).as_posix()
    if is_test_file(relative):
        raise CliError(f"{file} is a test file; tests are never changed")
    options = run_options(
        root,
        [relative],
        auto_apply=auto_apply,
        engine=engine,
        model=model,
        unsafe_fixes=unsafe_fixes,
        test_command=test_command,
        test_timeout=test_timeout,
    )
    console = output.console()
    state = execute(root, options, console)
    skipped = next((s for s in state.skipped if s.path == relative), None)
    if skipped is not None and state.phase is RunPhase.succeeded:
        render_state(state, console)
        raise CliError(f"{file} was not improved: {skipped.reason.value} ({skipped.detail})")
    finish(state, console)


def status_local(output_format: output.OutputFormat, project: Path | None = None) -> None:
    """Show the local run's persisted state (PROJECT/.tars/workflow-state.json)."""
    root = project_root(project or Path.cwd())
    store = StateStore(state_dir_for(root))
    try:
        state = store.load()
    except StateError as exc:
        raise CliError(str(exc)) from exc
    if state is None:
        raise CliError(
            f"no local run in {root} (no {store.state_file}); start one with `tarscli self-code run -t DIR`"
        )
    if output_format is output.OutputFormat.table:
        render_state(state, output.console())
    else:
        output.print_document(json.loads(state.model_dump_json(by_alias=True)), output_format)


def stop_local(project: Path | None = None) -> None:
    """Ask the local run of this project to stop after its current step (a stop file)."""
    root = project_root(project or Path.cwd())
    store = StateStore(state_dir_for(root))
    try:
        state = store.load()
    except StateError as exc:
        raise CliError(str(exc)) from exc
    if state is None or state.phase not in (RunPhase.pending, RunPhase.running):
        raise CliError(f"no local run is going on in {root}")
    store.request_stop()
    typer.echo(f"run {state.run_id}: stop requested ({store.stop_file}); accepted work is kept")


# --- demo --------------------------------------------------------------------------------


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


def _git(root: Path, *arguments: str) -> str:
    completed = subprocess.run(
        ["git", "-C", str(root), *arguments],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if completed.returncode != 0:
        raise CliError(f"git {arguments[0]} failed in {root}: {completed.stderr.strip()}")
    return completed.stdout


def run_project_tests(root: Path, console: Console, when: str) -> None:
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=DEMO_TEST_TIMEOUT_SECONDS,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CliError(
            f"the sample project's tests {when} did not finish in {DEMO_TEST_TIMEOUT_SECONDS}s"
        ) from exc
    lines = [line for line in completed.stdout.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else completed.stderr.strip()
    if completed.returncode != 0:
        raise CliError(f"the sample project's tests fail {when}: {last}")
    console.print(f"[green]✔ tests {when}:[/] {last}")


def demo(
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the temporary repository and print where it is.")
    ] = False,
    engine: EngineOption = None,
    model: ModelOption = DEFAULT_MODEL,
) -> None:
    """Copy the sample project into a temporary git repository and improve it with auto-apply.

    Shows the tests green before, every stage of the run, the diff and the statistics,
    and the tests green after. No cluster and no Ollama are needed.
    """
    source = sample_project()
    console = output.console()
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
            engine=choose_engine(engine),
            model=model,
            test_timeout_seconds=DEMO_TEST_TIMEOUT_SECONDS,
        )
        console.print(f"Running the workflow with auto-apply, engine {options.engine.value}…")
        with tempfile.TemporaryDirectory(prefix="tars-demo-learning-") as learning_dir:
            # The demo learns in its own store: showing it must not teach the user's.
            learning = LearningStore(Path(learning_dir) / "learning.sqlite3")
            state = execute(root, options, console, learning)
        console.rule("What changed")
        diff = (
            _git(root, "diff", "--stat", start, "HEAD") + "\n" + _git(root, "diff", start, "HEAD")
        )
        console.print(Syntax(diff, "diff", theme="ansi_dark", word_wrap=True))
        console.print(
            _git(root, "log", "--oneline", f"{start}..HEAD"), markup=False, highlight=False
        )
        console.rule("Statistics")
        render_state(state, console, show_location=keep)
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
