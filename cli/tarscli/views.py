"""What the commands show people: tables, `kubectl describe`-style summaries, live progress.

Cluster objects (TarsReplica, SelfCodingRun) and a local run's persisted state are turned
into rich renderables here and nowhere else; the commands print them, and the cluster and
local operations feed the live views (`ReplicaProgress`, `RunProgress`, `LiveView`) as
events arrive. Every live view is drawn by the one `progress_bar`. Views only render:
they neither read the cluster nor run anything. JSON and YAML output is tarscli.output's.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Self

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from tars_api.meta import Condition, find_condition
from tars_api.replica import ReplicaConditionType, TarsReplica
from tars_api.run import (
    FileOutcome,
    RunConditionType,
    RunStatistics,
    SelfCodingRun,
    TestEnvironment,
)
from tars_api.vocabulary import EngineName, SandboxMode
from tars_engine.core.events import EventKind, WorkflowEvent

from tarscli import output

if TYPE_CHECKING:
    from rich.progress import Progress
    from tars_engine.core.state import WorkflowState

OPERATOR_DEFAULT = "(the operator's default)"
NO_STATUS = "no status yet: is the operator running?"
# What passed the tests is green, whether applied or only accepted.
_OUTCOME_STYLE = {
    **dict.fromkeys((FileOutcome.applied, FileOutcome.accepted), "green"),
    FileOutcome.rejected: "yellow",
    FileOutcome.failed: "red",
    FileOutcome.skipped: "dim",
}


def progress_bar(console: Console, *, transient: bool = True, detail: bool = False) -> Progress:
    """Spinner, description, bar, done of total, elapsed time; `detail` adds a last column.

    Transient bars vanish when done, leaving the lines printed above them.
    """
    # Imported here: most commands never draw progress, and rich.progress (with its table
    # of spinners) is one of the slower imports at start-up.
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns: list[ProgressColumn] = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    if detail:
        columns.append(TextColumn("{task.fields[detail]}"))
    return Progress(*columns, console=console, transient=transient)


class LiveProgress:
    """A view drawn by a progress bar for as long as its `with` block runs."""

    progress: Progress

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()


def human_size(size: int) -> str:
    return f"{size / 1024:.1f} KiB" if size < 1024 * 1024 else f"{size / (1024 * 1024):.2f} MiB"


def statistics_table(statistics: RunStatistics, *, per_accepted: bool = False) -> Table:
    """A run's counts in one row; `per_accepted` adds test runs per accepted improvement."""
    columns = ["FILES", "PROCESSED", "FAILED", "PROPOSED", "ACCEPTED", "APPLIED", "TEST RUNS"]
    accepted = statistics.improvements_accepted
    values = [
        str(value)
        for value in (
            statistics.files_total,
            statistics.files_processed,
            statistics.files_failed,
            statistics.improvements_proposed,
            accepted,
            statistics.improvements_applied,
            statistics.test_runs,
        )
    ]
    if per_accepted:
        columns.append("RUNS/ACCEPTED")
        values.append(f"{statistics.test_runs / accepted:.2f}" if accepted else "-")
    table = output.table(*columns, title="Statistics")
    table.add_row(*values)
    return table


def conditions_table(conditions: list[Condition]) -> Table:
    grid = output.table("TYPE", "STATUS", "REASON", "MESSAGE", "SINCE", title="Conditions")
    for condition in conditions:
        grid.add_row(
            condition.type,
            output.text(condition.status),
            condition.reason,
            output.text(condition.message),
            output.age(condition.last_transition_time),
        )
    return grid


# --- replicas ------------------------------------------------------------------------------


def _desired_pods(replica: TarsReplica) -> str:
    return f"{replica.spec.replicas}{' (suspended)' if replica.spec.suspend else ''}"


def replicas_table(replicas: list[TarsReplica]) -> Table:
    grid = output.table("NAME", "ROLE", "DESIRED", "READY", "PHASE", "ENDPOINT", "AGE")
    for replica in replicas:
        status = replica.status
        grid.add_row(
            replica.name,
            output.text(replica.spec.role),
            _desired_pods(replica),
            output.text(status.ready_replicas if status else None),
            output.text(status.phase if status else None),
            output.text(status.endpoint if status else None),
            output.age(replica.metadata.creation_timestamp),
        )
    return grid


def replica_details(replica: TarsReplica) -> RenderableType:
    spec, status = replica.spec, replica.status
    rows = [
        ("Name", replica.name),
        ("Namespace", output.text(replica.metadata.namespace)),
        ("Role", output.text(spec.role)),
        ("Desired", _desired_pods(replica)),
        ("Ready", output.text(status.ready_replicas if status else None)),
        ("Phase", output.text(status.phase) if status else f"- ({NO_STATUS})"),
        ("Endpoint", output.text(status.endpoint if status else None)),
        ("Engine", output.text(spec.engine) if spec.engine else OPERATOR_DEFAULT),
        ("Model", spec.model or OPERATOR_DEFAULT),
        ("Image", spec.image or OPERATOR_DEFAULT),
        ("Capabilities", ", ".join(status.capabilities) if status and status.capabilities else "-"),
        ("Age", output.age(replica.metadata.creation_timestamp)),
    ]
    parts: list[Table] = [output.summary(rows)]
    if status and status.conditions:
        parts.append(conditions_table(status.conditions))
    return output.sections(*parts)


def replica_state(replica: TarsReplica | None, *, with_message: bool = True) -> str:
    """Why a replica is (not) ready: phase and reason, and the condition's message if asked."""
    if replica is None:
        return "deleted"
    if replica.spec.suspend:
        return "suspended (tarscli replica start to resume)"
    if replica.status is None or replica.status.phase is None:
        return NO_STATUS
    ready = find_condition(replica.status.conditions, ReplicaConditionType.ready)
    if ready is None:
        return replica.status.phase.value
    detail = f" ({ready.message})" if with_message and ready.message else ""
    return f"{replica.status.phase.value}: {ready.reason}{detail}"


class ReplicaProgress(LiveProgress):
    """A line per replica while they come up: its ready pods of those desired, or why not."""

    def __init__(self, console: Console, names: Iterable[str]) -> None:
        self.progress = progress_bar(console, transient=False)
        self._tasks = {name: self.progress.add_task(name, total=1) for name in names}

    def show(self, name: str, replica: TarsReplica | None) -> None:
        desired = max(1, replica.spec.replicas) if replica is not None else 1
        ready = (replica.status.ready_replicas or 0) if replica and replica.status else 0
        ok = replica is not None and replica.is_ready
        state = "Ready" if ok else replica_state(replica, with_message=False)
        self.progress.update(
            self._tasks[name],
            description=f"{name:<12} {state}",
            total=desired,
            completed=min(ready, desired),
        )


# --- runs in a cluster -----------------------------------------------------------------------


def brief_phase(run: SelfCodingRun) -> str:
    if run.status is None or run.status.phase is None:
        return "the operator has not picked it up yet"
    return f"phase {run.status.phase.value}"


def _phase(run: SelfCodingRun) -> str:
    if run.status is None or run.status.phase is None:
        return f"- ({NO_STATUS})"
    return run.status.phase.value


def _source(run: SelfCodingRun) -> str:
    source = run.spec.source
    if source.upload is not None:
        return f"upload (configmap/{source.upload.config_map})"
    if source.git is not None:
        return f"git {source.git.url} @ {source.git.ref}"
    if source.volume is not None:
        return f"volume {source.volume.claim_name or source.volume.host_path}"
    return "-"


def learning_mode(learning: bool) -> str:
    return "on" if learning else "off (nothing read from the learning store, nothing recorded)"


def run_details(run: SelfCodingRun) -> RenderableType:
    spec, status = run.spec, run.status
    rows = [
        ("Run", run.name),
        ("Namespace", output.text(run.metadata.namespace)),
        ("Phase", _phase(run) + (" (stop requested)" if spec.stop else "")),
        ("Stage", output.text(status.stage if status else None)),
        ("Progress", output.text(status.progress if status else None)),
        ("Current file", output.text(status.current_file if status else None)),
        ("Targets", ", ".join(spec.targets)),
        ("Source", _source(run)),
        ("Engine", f"{spec.engine.value} (model {spec.model})"),
        ("Auto-apply", "yes" if spec.auto_apply else "no (a patch)"),
        (
            "Sandbox",
            sandbox_text(status.sandbox if status else None, spec.sandbox, spec.test_network),
        ),
        (
            "Test environment",
            test_environment_text(
                status.test_environment if status else None, spec.test_environment
            ),
        ),
        ("Learning", learning_mode(spec.learning)),
        ("Started", output.timestamp(status.start_time if status else None)),
        ("Completed", output.timestamp(status.completion_time if status else None)),
        (
            "Report",
            f"configmap/{status.report_config_map}" if status and status.report_config_map else "-",
        ),
        ("Age", output.age(run.metadata.creation_timestamp)),
    ]
    if status and status.branch:
        rows.append(("Branch", status.branch))
    parts: list[Table] = [output.summary(rows)]
    if status is not None:
        parts.append(statistics_table(status.statistics))
        if status.conditions:
            parts.append(conditions_table(status.conditions))
        if status.latest_results:
            results = output.table(
                "FILE", "OUTCOME", "ATTEMPTS", "COMMIT", "MESSAGE", title="Latest results"
            )
            for result in status.latest_results:
                results.add_row(
                    result.path,
                    result.outcome.value,
                    str(result.attempts),
                    output.text(result.commit),
                    output.text(result.message),
                )
            parts.append(results)
    return output.sections(*parts)


def run_headline(run: SelfCodingRun) -> str:
    """Phase · stage · current file, and what a pending run waits for."""
    status = run.status
    if status is None or status.phase is None:
        return "waiting for the operator"
    words = [status.phase.value]
    if status.stage is not None:
        words.append(status.stage.value)
    if status.current_file:
        words.append(status.current_file)
    waiting = find_condition(status.conditions, RunConditionType.replicas_ready)
    if status.phase.value == "Pending" and waiting is not None and not waiting.is_true:
        words.append(f"waiting: {waiting.message or waiting.reason}")
    return " · ".join(words)


class RunProgress(LiveProgress):
    """A run followed live: a bar over its files and a line per phase or stage it enters."""

    def __init__(self, console: Console, name: str) -> None:
        self.progress = progress_bar(console)
        self._task = self.progress.add_task(name, total=None)
        self._shown: tuple[object, object] | None = None

    def show(self, run: SelfCodingRun) -> None:
        status = run.status
        statistics = status.statistics if status else None
        self.progress.update(
            self._task,
            description=run_headline(run),
            total=statistics.files_total or None if statistics else None,
            completed=statistics.files_processed if statistics else 0,
        )
        milestone = (status.phase, status.stage) if status else (None, None)
        if milestone != self._shown:
            self._shown = milestone
            self.progress.console.print(f"{time.strftime('%H:%M:%S')}  {run_headline(run)}")


# --- runs on this machine --------------------------------------------------------------------


def _stage_label(stage: str) -> str:
    return f"[bold]{stage:<10}"


class LiveView(LiveProgress):
    """The run's live progress: a line per stage and per finished file, a bar for the files."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = progress_bar(console, detail=True)
        self.task = self.progress.add_task(_stage_label("Starting"), total=None, detail="")
        self._stage = ""

    def __call__(self, event: WorkflowEvent) -> None:
        stage = event.stage.value
        if stage != self._stage and event.kind is not EventKind.finished:
            self._stage = stage
            message = f"  {escape(event.message)}" if event.message else ""
            self.console.print(f"[bold cyan]▸ {stage}[/]{message}")
        elif event.kind is EventKind.stage and event.message:
            self.console.print(f"  {event.message}", markup=False)
        if event.kind is EventKind.tested and event.message:
            self.console.print(
                f"  [dim]test run {event.statistics.test_runs}:[/] {escape(event.message)}",
                highlight=False,
            )
        if event.kind in (EventKind.file, EventKind.file_done) and event.path and event.message:
            self.console.print(f"  {event.path}: {event.message}", markup=False, highlight=False)
        self.progress.update(
            self.task,
            total=event.files_total or None,
            completed=event.files_done,
            description=_stage_label(stage),
            detail=event.current_file or "",
        )


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


def left_out_table(state: WorkflowState) -> Table:
    """Every rule left out of a file's changes, and why: its fix introduced what the run
    could not fix, or the tests failed with it."""
    table = output.table("FILE", "RULE", "CAUSE", "WHY", title="Rules left out")
    for record in state.files:
        for drop in record.dropped_rules:
            table.add_row(record.path, drop.rule, drop.cause.value, output.text(drop.reason))
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


def sandbox_text(detail: str | None, mode: SandboxMode, network: bool) -> str:
    """How the tests ran, as the latest test run said; before any, what the run asked for."""
    if detail:
        return detail
    return f"{mode.value}{', network allowed' if network else ''} (no test has run yet)"


def test_environment_text(detail: str | None, environment: TestEnvironment | None) -> str:
    """What the tests run with: the virtualenv made for them, the test image, or the tester's
    own Python."""
    if detail:
        return detail
    if environment is None:
        return "the tester's own Python (TARS and pytest only)"
    if environment.image is not None:
        return f"{environment.recipe} (no test has run yet)"
    return f"a virtualenv: {environment.recipe} (not made yet)"


def render_state(state: WorkflowState, console: Console, *, show_location: bool = True) -> None:
    rows = [
        ("Run", state.run_id),
        ("Project", state.project_root),
        ("Targets", ", ".join(state.options.targets)),
        ("Engine", state.options.engine.value
         + (f" (model {state.options.model})" if state.options.engine is EngineName.ollama else "")),
        ("Sandbox", sandbox_text(
            state.sandbox.detail if state.sandbox else None,
            state.options.sandbox, state.options.test_network,
        )),
        ("Learning", learning_mode(state.options.learning)),
        ("Phase", state.phase.value),
        ("Stage", state.stage.value),
        ("Progress", state.progress),
        ("Current file", output.text(state.current_file)),
        ("Started", output.timestamp(state.started_at)),
        ("Completed", output.timestamp(state.completed_at)),
        ("Message", output.text(state.message)),
    ]  # fmt: skip
    parts: list[Table] = [
        output.summary(rows),
        statistics_table(state.statistics, per_accepted=True),
    ]
    if state.files:
        parts.append(results_table(state))
    if any(record.dropped_rules for record in state.files):
        parts.append(left_out_table(state))
    if state.skipped:
        parts.append(skipped_table(state))
    console.print(Group(*parts))
    if show_location:
        console.print(where_the_work_is(state), markup=False, highlight=False)
