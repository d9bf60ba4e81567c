"""The workflow on this machine: `self-code run` and `improve`, `status --local`, `stop --local`.

The roles run in-process (tarscli.local_ops runs them); these commands turn their options
into a run, show how it ends, and show or stop the run whose state a project keeps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from tars_api.vocabulary import DEFAULT_MODEL, DEFAULT_TEST_TIMEOUT_SECONDS, SandboxMode

from tarscli import options, output
from tarscli.errors import CliError

if TYPE_CHECKING:
    from rich.console import Console
    from tars_engine.core.state import WorkflowState

# The engine's modules are imported inside the commands that run it: a cluster command of
# the same group would otherwise load the whole workflow.

EXIT_STOPPED = 130


def finish(state: WorkflowState, console: Console) -> None:
    """Show the outcome; a run that did not succeed exits non-zero with its reason on one line."""
    from tars_api.run import RunPhase

    from tarscli import views

    views.render_state(state, console)
    if state.phase is RunPhase.stopped:
        console.print(f"Stopped: {state.message}. Run the same command again to resume.")
        raise typer.Exit(EXIT_STOPPED)
    if state.phase is not RunPhase.succeeded:
        raise CliError(state.message)


def run(
    ctx: typer.Context,
    targets: options.TargetsOption,
    auto_apply: options.AutoApplyOption = False,
    engine: options.EngineOption = None,
    model: options.ModelOption = DEFAULT_MODEL,
    max_files: Annotated[
        int | None,
        options.count("--max-files", min=1, help="Work on at most N files.", show_default=False),
    ] = None,
    max_attempts: Annotated[
        int,
        options.count(
            "--max-attempts",
            min=1,
            max=10,
            help="Attempts per file with the ollama engine; the static engine bisects a"
            " failing file's rules instead.",
        ),
    ] = 2,
    deadline: Annotated[
        float | None,
        options.seconds("--deadline", help="Seconds before the run gives up.", show_default=False),
    ] = None,
    test_command: options.TestCommandOption = None,
    test_timeout: options.TestTimeoutOption = DEFAULT_TEST_TIMEOUT_SECONDS,
    sandbox: options.SandboxOption = SandboxMode.auto,
    test_env: options.TestEnvOption = None,
    test_network: options.TestNetworkOption = False,
    unsafe_fixes: options.UnsafeOption = False,
    no_learning: options.NoLearningOption = False,
) -> None:
    """Run the whole workflow on this machine (roles in-process), with live progress.

    State lives in PROJECT/.tars/ (workflow-state.json); a stopped run resumes when
    the same command runs again.
    """
    from tars_engine.core.budget import Budget

    from tarscli.local_ops import execute, local_project_root, run_options
    from tarscli.upload import require_python_files, resolve_targets

    cwd = Path.cwd()
    root = local_project_root(cwd, targets)
    relative = resolve_targets(root, cwd, targets)
    require_python_files(root, relative)
    budget = Budget(
        max_files=max_files, max_attempts_per_file=max_attempts, deadline_seconds=deadline
    )
    # auto_apply, engine, model and the test options reach the run through ctx.params.
    choices = options.WorkflowChoices.model_validate(ctx.params)
    settings = run_options(root, relative, choices, budget)
    console = output.console()
    finish(execute(root, settings, console), console)


def improve(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(metavar="FILE", help="The Python file to improve.", show_default=False),
    ],
    auto_apply: options.AutoApplyOption = False,
    engine: options.EngineOption = None,
    model: options.ModelOption = DEFAULT_MODEL,
    test_command: options.TestCommandOption = None,
    test_timeout: options.TestTimeoutOption = DEFAULT_TEST_TIMEOUT_SECONDS,
    sandbox: options.SandboxOption = SandboxMode.auto,
    test_env: options.TestEnvOption = None,
    test_network: options.TestNetworkOption = False,
    unsafe_fixes: options.UnsafeOption = False,
    no_learning: options.NoLearningOption = False,
) -> None:
    """Improve one file with the same pipeline: analyze, generate, prove with the tests, apply."""
    from tars_api.run import RunPhase
    from tars_engine.core.validation import is_test_file

    from tarscli import views
    from tarscli.local_ops import execute, local_project_root, run_options

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
    # The shared options reach the run through ctx.params, as in `run`.
    choices = options.WorkflowChoices.model_validate(ctx.params)
    settings = run_options(root, [relative], choices)
    console = output.console()
    state = execute(root, settings, console)
    skipped = next((s for s in state.skipped if s.path == relative), None)
    if skipped is not None and state.phase is RunPhase.succeeded:
        views.render_state(state, console)
        raise CliError(f"{file} was not improved: {skipped.reason.value} ({skipped.detail})")
    finish(state, console)


def status_local(output_format: output.OutputFormat, project: Path | None = None) -> None:
    """Show the local run's persisted state (PROJECT/.tars/workflow-state.json)."""
    from tarscli import views
    from tarscli.local_ops import saved_run

    root, store, state = saved_run(project)
    if state is None:
        raise CliError(
            f"no local run in {root} (no {store.state_file}); start one with `tarscli self-code run -t DIR`"
        )
    if output_format is output.OutputFormat.table:
        views.render_state(state, output.console())
    else:
        output.print_document(json.loads(state.model_dump_json(by_alias=True)), output_format)


def stop_local(project: Path | None = None) -> None:
    """Ask the local run of this project to stop after its current step (a stop file)."""
    from tars_api.run import RunPhase

    from tarscli.local_ops import saved_run

    root, store, state = saved_run(project)
    if state is None or state.phase not in (RunPhase.pending, RunPhase.running):
        raise CliError(f"no local run is going on in {root}")
    store.request_stop()
    typer.echo(f"run {state.run_id}: stop requested ({store.stop_file}); accepted work is kept")
