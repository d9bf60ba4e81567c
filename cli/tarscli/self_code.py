"""`tarscli self-code`: SelfCodingRun objects in a cluster — setup, start, status, stop."""

from __future__ import annotations

import base64
import secrets
import shlex
import string
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from tars_api.crdgen import crd_manifests
from tars_api.meta import ObjectMeta, find_condition
from tars_api.names import CLI_LABELS, DEFAULT_UPLOAD_KEY, PATCH_KEY, RUN_LABEL
from tars_api.replica import ReplicaConditionType, TarsReplica
from tars_api.run import RunConditionType, RunSource, SelfCodingRun, SelfCodingRunSpec, UploadSource
from tars_api.vocabulary import EngineName, Role

from tarscli import coordinator_access, output
from tarscli import local as local_runs
from tarscli.errors import CliError, fail, report
from tarscli.kube import (
    FIELD_MANAGER,
    REQUEST_TIMEOUT,
    Cluster,
    ContextOption,
    KubeconfigOption,
    NamespaceOption,
    connect,
)
from tarscli.replica import conditions_table
from tarscli.upload import build_archive, project_root, resolve_targets

app = typer.Typer(
    help=(
        "Improve a codebase with the self-coding workflow. On this machine: `run` and `improve`. "
        "In a cluster: `setup` the role replicas, then `start`, follow (`status --watch`) and "
        "`stop` SelfCodingRuns."
    ),
    no_args_is_help=True,
)

DEFAULT_SETUP_TIMEOUT_SECONDS = 300
CREATED_AT_ANNOTATION = "tars.dev/created-at"
EXIT_INTERRUPTED = 130
_NAME_ALPHABET = string.ascii_lowercase + string.digits
# A run's name is also a label value (63 characters at most) and part of its children's names.
_NAME_PREFIX_LENGTH = 40

RunArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="RUN",
        help="Name of the SelfCodingRun (default: the latest in the namespace).",
        show_default=False,
    ),
]


# --- setup -----------------------------------------------------------------------------


def install_crds(cluster: Cluster, deadline: float) -> None:
    """Server-side apply the CRDs generated from the API models, then wait until Established."""
    manifests = crd_manifests()
    for manifest in manifests:
        cluster.extensions.patch_custom_resource_definition(
            manifest["metadata"]["name"],
            manifest,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
            _request_timeout=REQUEST_TIMEOUT,
        )
        typer.echo(f"customresourcedefinition/{manifest['metadata']['name']} applied")
    for manifest in manifests:
        _wait_established(cluster, manifest["metadata"]["name"], deadline)


def _is_established(crd: dict[str, Any]) -> bool:
    conditions = crd.get("status", {}).get("conditions") or []
    return any(
        item.get("type") == "Established" and item.get("status") == "True" for item in conditions
    )


def _wait_established(cluster: Cluster, name: str, deadline: float) -> None:
    watcher = watch.Watch()
    try:
        for event in watcher.stream(
            cluster.extensions.list_custom_resource_definition,
            field_selector=f"metadata.name={name}",
            timeout_seconds=max(1, round(deadline - time.monotonic())),
        ):
            if _is_established(event["raw_object"]):
                return
    finally:
        watcher.stop()
    raise CliError(f"customresourcedefinition/{name} was not Established in time")


def _is_ready(replica: TarsReplica | None) -> bool:
    return replica is not None and replica.is_ready


def _replica_state(replica: TarsReplica | None, *, with_message: bool = True) -> str:
    """Why a replica is (not) ready: phase and reason, and the condition's message if asked."""
    if replica is None:
        return "deleted"
    if replica.spec.suspend:
        return "suspended (tarscli replica start to resume)"
    if replica.status is None or replica.status.phase is None:
        return "no status yet: is the operator running?"
    ready = find_condition(replica.status.conditions, ReplicaConditionType.ready)
    if ready is None:
        return replica.status.phase.value
    detail = f" ({ready.message})" if with_message and ready.message else ""
    return f"{replica.status.phase.value}: {ready.reason}{detail}"


def wait_for_replicas(
    cluster: Cluster, replicas: list[TarsReplica], timeout: int, deadline: float
) -> None:
    """Follow the replicas (a watch, not polling) until all are Ready or `deadline` passes.

    `timeout` is the user's --timeout, which `deadline` was computed from.
    """
    latest: dict[str, TarsReplica | None] = {replica.name: replica for replica in replicas}
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=output.console(),
    )

    def show(task: TaskID, replica: TarsReplica | None) -> None:
        name = progress.tasks[task].fields["name"]
        desired = max(1, replica.spec.replicas) if replica is not None else 1
        ready = (replica.status.ready_replicas or 0) if replica and replica.status else 0
        state = "Ready" if _is_ready(replica) else _replica_state(replica, with_message=False)
        progress.update(
            task, description=f"{name:<12} {state}", total=desired, completed=min(ready, desired)
        )

    with progress:
        tasks = {name: progress.add_task(name, name=name, total=1) for name in latest}
        for name, replica in latest.items():
            show(tasks[name], replica)
        if all(_is_ready(replica) for replica in latest.values()):
            return
        for event, replica in cluster.replicas.watch(deadline=deadline):
            if replica.name not in latest:
                continue
            latest[replica.name] = None if event == "DELETED" else replica
            show(tasks[replica.name], latest[replica.name])
            if all(_is_ready(item) for item in latest.values()):
                return
    waiting = ", ".join(
        f"{name} ({_replica_state(item)})" for name, item in latest.items() if not _is_ready(item)
    )
    raise CliError(f"timed out after {timeout}s waiting for replicas to be Ready: {waiting}")


@app.command()
def setup(
    install_crds_flag: Annotated[
        bool,
        typer.Option(
            "--install-crds",
            help="Install or update the TARS CRDs (server-side apply; needs rights on CRDs) before anything else.",
        ),
    ] = False,
    no_wait: Annotated[
        bool,
        typer.Option("--no-wait", help="Create the replicas and return without waiting for them."),
    ] = False,
    timeout: Annotated[
        int,
        typer.Option(
            "--timeout", min=1, help="Seconds to wait for the replicas to be Ready before failing."
        ),
    ] = DEFAULT_SETUP_TIMEOUT_SECONDS,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Prepare a namespace for self-coding runs: the four role replicas, ready to work.

    Checks that the CRDs are installed (--install-crds installs them), creates the
    coordinator's ServiceAccount, Role and RoleBinding when absent, the
    analyzer, generator, tester and coordinator TarsReplicas (existing ones are left
    as they are), and waits until all four are Ready.
    """
    cluster = connect(kubeconfig, context, namespace)
    deadline = time.monotonic() + timeout
    if install_crds_flag:
        install_crds(cluster, deadline)
    else:
        cluster.require_crds()
    replicas: list[TarsReplica] = []
    for role in Role:
        wanted = TarsReplica.build(role.value, role, labels=CLI_LABELS)
        try:
            replicas.append(cluster.replicas.create(wanted))
            typer.echo(f"tarsreplica/{role.value} created")
        except ApiException as error:
            if error.status != 409:
                raise
            existing = cluster.replicas.get(role.value)
            replicas.append(existing)
            note = (
                ""
                if existing.spec.role is role
                else f", but it serves the {existing.spec.role.value} role"
            )
            typer.echo(f"tarsreplica/{role.value} already exists (left unchanged{note})")
    # After the replicas: a user who may create those but not RBAC (the chart made the
    # account) gets the replicas and a warning.
    try:
        for line in coordinator_access.ensure(cluster.api_client, cluster.namespace):
            typer.echo(line)
    except ApiException as error:
        if error.status != 403:
            raise
        typer.echo(
            f"warning: cannot create the coordinator's {coordinator_access.COORDINATOR_ACCOUNT} "
            "ServiceAccount and Role (forbidden); coordinator pods need them: install the chart "
            "or ask an administrator",
            err=True,
        )
    if no_wait:
        return
    wait_for_replicas(cluster, replicas, timeout, deadline)
    typer.echo(f'All {len(replicas)} role replicas are Ready in namespace "{cluster.namespace}".')


# --- start -----------------------------------------------------------------------------


def name_prefix(project: Path) -> str:
    """An RFC 1123 prefix for generateName, from the project directory's name."""
    cleaned = "".join(char if char in _NAME_ALPHABET else "-" for char in project.name.lower())
    cleaned = "-".join(part for part in cleaned.split("-") if part)[:_NAME_PREFIX_LENGTH].strip("-")
    return f"{cleaned or 'run'}-"


def _delete_quietly(cluster: Cluster, config_map: str) -> None:
    """Best-effort cleanup on a failed start; the original failure is what the user needs to see."""
    try:
        cluster.core.delete_namespaced_config_map(
            config_map, cluster.namespace, _request_timeout=REQUEST_TIMEOUT
        )
    except ApiException as error:
        report(f"could not delete configmap/{config_map} after the failed start: {error.reason}")


def _size(size: int) -> str:
    return f"{size / 1024:.1f} KiB" if size < 1024 * 1024 else f"{size / (1024 * 1024):.2f} MiB"


@app.command()
def start(
    targets: Annotated[
        list[str],
        typer.Option(
            "--target",
            "-t",
            help="Directory to improve, inside the project (repeat for several).",
            show_default=False,
        ),
    ],
    auto_apply: Annotated[
        bool,
        typer.Option(
            "--auto-apply",
            "-a",
            help="Apply accepted improvements instead of only producing a patch.",
        ),
    ] = False,
    engine: Annotated[
        EngineName | None,
        typer.Option(
            help="Generation engine: static (ruff fixes) or ollama (a local model).",
            show_default="static",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model for the ollama engine.", show_default="llama3")
    ] = None,
    max_files: Annotated[
        int | None,
        typer.Option("--max-files", min=1, help="Budget: files to work on.", show_default="20"),
    ] = None,
    test_command: Annotated[
        str | None,
        typer.Option(
            "--test-command",
            help='The project\'s test command, e.g. "pytest -q" (default: detected).',
            show_default=False,
        ),
    ] = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Start a SelfCodingRun on the targets of this project; prints the run's name.

    The project is the git work tree around the current directory (else the current
    directory). Its files (git-tracked plus untracked, not ignored) are uploaded in a
    ConfigMap that the run owns, so deleting the run removes the upload too.
    """
    cwd = Path.cwd()
    root = project_root(cwd)
    relative_targets = resolve_targets(root, cwd, targets)
    try:
        test_argv = shlex.split(test_command) if test_command is not None else None
    except ValueError as error:
        raise CliError(f"--test-command {test_command!r} cannot be parsed: {error}") from error
    if test_argv == []:
        raise CliError("--test-command must not be empty (leave it out to detect the test command)")
    archive = build_archive(root, relative_targets)

    prefix = name_prefix(root)
    config_map = f"{prefix}upload-{''.join(secrets.choice(_NAME_ALPHABET) for _ in range(5))}"
    spec_fields = {
        "engine": engine,
        "model": model,
        "max_files": max_files,
        "test_command": test_argv,
    }
    run = SelfCodingRun(
        metadata=ObjectMeta(
            generate_name=prefix,
            labels=dict(CLI_LABELS),
            annotations={
                CREATED_AT_ANNOTATION: datetime.now(UTC).isoformat(timespec="microseconds")
            },
        ),
        spec=SelfCodingRunSpec(
            targets=relative_targets,
            source=RunSource(upload=UploadSource(config_map=config_map, key=DEFAULT_UPLOAD_KEY)),
            auto_apply=auto_apply,
            **{field: value for field, value in spec_fields.items() if value is not None},
        ),
    )

    cluster = connect(kubeconfig, context, namespace)
    cluster.require_crds()
    cluster.core.create_namespaced_config_map(
        cluster.namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=config_map, labels=dict(CLI_LABELS)),
            binary_data={DEFAULT_UPLOAD_KEY: base64.b64encode(archive.data).decode("ascii")},
        ),
        field_manager=FIELD_MANAGER,
        _request_timeout=REQUEST_TIMEOUT,
    )
    try:
        created = cluster.runs.create(run)
    except BaseException:
        _delete_quietly(cluster, config_map)
        raise
    try:
        cluster.core.patch_namespaced_config_map(
            config_map,
            cluster.namespace,
            {
                "metadata": {
                    "ownerReferences": [created.owner_reference(controller=False).to_dict()],
                    "labels": {RUN_LABEL: created.name},
                }
            },
            field_manager=FIELD_MANAGER,
            _content_type="application/merge-patch+json",
            _request_timeout=REQUEST_TIMEOUT,
        )
    except BaseException:
        cluster.runs.delete(created.name)
        _delete_quietly(cluster, config_map)
        raise
    typer.echo(
        f"Uploaded {len(archive.files)} files ({_size(archive.size)}) from {root} to configmap/{config_map}; "
        f'follow with "tarscli self-code status {created.name} --watch".',
        err=True,
    )
    typer.echo(created.name)


# --- status ----------------------------------------------------------------------------


def latest_run(cluster: Cluster) -> SelfCodingRun:
    runs = cluster.runs.list()
    if not runs:
        raise CliError(
            f'no SelfCodingRun in namespace "{cluster.namespace}"; start one with "tarscli self-code start -t DIR"'
        )
    return max(runs, key=_creation_order)


def _creation_order(run: SelfCodingRun) -> tuple[datetime, str]:
    """creationTimestamp has second precision; runs started here also carry microseconds."""
    created = run.metadata.creation_timestamp or datetime.min.replace(tzinfo=UTC)
    return created, run.metadata.annotations.get(CREATED_AT_ANNOTATION, "")


def _resolve_run(cluster: Cluster, name: str | None) -> SelfCodingRun:
    return cluster.runs.get(name) if name is not None else latest_run(cluster)


def _brief_phase(run: SelfCodingRun) -> str:
    if run.status is None or run.status.phase is None:
        return "the operator has not picked it up yet"
    return f"phase {run.status.phase.value}"


def _phase(run: SelfCodingRun) -> str:
    if run.status is None or run.status.phase is None:
        return "- (no status yet: is the operator running?)"
    return run.status.phase.value


def run_details(run: SelfCodingRun) -> RenderableType:
    spec, status = run.spec, run.status
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    if spec.source.upload is not None:
        source = f"upload (configmap/{spec.source.upload.config_map})"
    elif spec.source.git is not None:
        source = f"git {spec.source.git.url} @ {spec.source.git.ref}"
    elif spec.source.volume is not None:
        source = f"volume {spec.source.volume.claim_name or spec.source.volume.host_path}"
    else:
        source = "-"
    rows = [
        ("Run", run.name),
        ("Namespace", output.text(run.metadata.namespace)),
        ("Phase", _phase(run) + (" (stop requested)" if spec.stop else "")),
        ("Stage", output.text(status.stage if status else None)),
        ("Progress", output.text(status.progress if status else None)),
        ("Current file", output.text(status.current_file if status else None)),
        ("Targets", ", ".join(spec.targets)),
        ("Source", source),
        ("Engine", f"{spec.engine.value} (model {spec.model})"),
        ("Auto-apply", "yes" if spec.auto_apply else "no (a patch)"),
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
    for label, value in rows:
        summary.add_row(label, value)
    parts: list[Table] = [summary]
    if status is not None:
        statistics = status.statistics
        numbers = output.table(
            "FILES",
            "PROCESSED",
            "FAILED",
            "PROPOSED",
            "ACCEPTED",
            "APPLIED",
            "TEST RUNS",
            title="Statistics",
        )
        numbers.add_row(
            *(
                str(value)
                for value in (
                    statistics.files_total,
                    statistics.files_processed,
                    statistics.files_failed,
                    statistics.improvements_proposed,
                    statistics.improvements_accepted,
                    statistics.improvements_applied,
                    statistics.test_runs,
                )
            )
        )
        parts.append(numbers)
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


def _headline(run: SelfCodingRun) -> str:
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


def follow_run(cluster: Cluster, name: str, console: Console) -> SelfCodingRun | None:
    """Follow a run with a progress bar and a line per phase or stage change."""
    last: SelfCodingRun | None = None
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress:
        task = progress.add_task(name, total=None)
        shown: tuple[object, object] | None = None
        for event, run in cluster.runs.watch(name=name):
            if event == "DELETED":
                raise CliError(f'SelfCodingRun "{name}" was deleted while being watched')
            last = run
            status = run.status
            statistics = status.statistics if status else None
            progress.update(
                task,
                description=_headline(run),
                total=statistics.files_total or None if statistics else None,
                completed=statistics.files_processed if statistics else 0,
            )
            milestone = (status.phase, status.stage) if status else (None, None)
            if milestone != shown:
                shown = milestone
                progress.console.print(f"{time.strftime('%H:%M:%S')}  {_headline(run)}")
            if run.is_terminal:
                break
    return last


def _follow_documents(cluster: Cluster, name: str, output_format: output.OutputFormat) -> None:
    """Print every new version of the run until it ends, as kubectl get -w -o json does."""
    for event, run in cluster.runs.watch(name=name):
        if event == "DELETED":
            raise CliError(f'SelfCodingRun "{name}" was deleted while being watched')
        output.print_document(output.document(run, SelfCodingRun), output_format)
        if run.is_terminal:
            return


@app.command()
def status(
    run_name: RunArgument = None,
    output_format: output.OutputOption = output.OutputFormat.table,
    follow: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Follow the run with a progress bar until it ends (Ctrl-C to leave).",
        ),
    ] = False,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
    local: Annotated[
        bool,
        typer.Option(
            "--local", help="Show the run made on this machine (`self-code run`) in this project."
        ),
    ] = False,
) -> None:
    """Show a run: phase, stage, current file, times, statistics, conditions, latest results.

    Conditions say why a run is waiting (e.g. no coordinator replica is ready).
    """
    if local:
        local_runs.status_local(output_format)
        return
    cluster = connect(kubeconfig, context, namespace)
    run = _resolve_run(cluster, run_name)
    if follow:
        try:
            if output_format is output.OutputFormat.table:
                run = follow_run(cluster, run.name, output.console()) or run
            else:
                _follow_documents(cluster, run.name, output_format)
                return
        except KeyboardInterrupt:
            typer.echo(
                f'Stopped watching; the run goes on ("tarscli self-code stop {run.name}" stops it).',
                err=True,
            )
            raise typer.Exit(EXIT_INTERRUPTED) from None
    if output_format is output.OutputFormat.table:
        output.console().print(run_details(run))
    else:
        output.print_document(output.document(run, SelfCodingRun), output_format)


# --- stop ------------------------------------------------------------------------------


@app.command()
def stop(
    run_name: RunArgument = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
    local: Annotated[
        bool,
        typer.Option("--local", help="Stop the run going on on this machine in this project."),
    ] = False,
) -> None:
    """Ask a run to stop (spec.stop=true); improvements already accepted are kept."""
    if local:
        local_runs.stop_local()
        return
    cluster = connect(kubeconfig, context, namespace)
    run = _resolve_run(cluster, run_name)
    if run.is_terminal:
        typer.echo(
            f"selfcodingrun/{run.name} has already ended ({_brief_phase(run)}); nothing to stop"
        )
        return
    if run.spec.stop:
        typer.echo(f"selfcodingrun/{run.name}: stop was already requested ({_brief_phase(run)})")
        return
    stopped = cluster.runs.merge_patch(run.name, {"spec": {"stop": True}})
    typer.echo(f"selfcodingrun/{stopped.name}: stop requested ({_brief_phase(stopped)})")


# --- diff and apply --------------------------------------------------------------------


def report_patch(cluster: Cluster, run: SelfCodingRun) -> str:
    """The accepted improvements of an ended run, from the ConfigMap it owns."""
    status = run.status
    if status is None or status.report_config_map is None:
        state = _brief_phase(run)
        if run.is_terminal:
            fail(f"selfcodingrun/{run.name} ({state}) has no report ConfigMap")
        fail(f"selfcodingrun/{run.name} has not ended yet ({state}); its patch comes at the end")
    try:
        config_map = cluster.core.read_namespaced_config_map(
            status.report_config_map, cluster.namespace, _request_timeout=REQUEST_TIMEOUT
        )
    except ApiException as error:
        if error.status == 404:
            fail(f"configmap/{status.report_config_map} of selfcodingrun/{run.name} is gone")
        raise
    return str((config_map.data or {}).get(PATCH_KEY, ""))


@app.command()
def diff(
    run_name: RunArgument = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Print the patch of a run's accepted improvements (for review or `git apply`)."""
    cluster = connect(kubeconfig, context, namespace)
    patch = report_patch(cluster, _resolve_run(cluster, run_name))
    typer.echo(patch, nl=False)


def _git_apply(project: Path, patch: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "apply", "--whitespace=nowarn", *extra, "-"],
        cwd=project,
        input=patch,
        capture_output=True,
        text=True,
        check=False,
    )


@app.command()
def apply(
    run_name: RunArgument = None,
    project: Annotated[
        Path,
        typer.Option(
            "--project", "-C", help="The local checkout the run was started from.", file_okay=False
        ),
    ] = Path("."),
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Apply a run's accepted improvements to the local tree, all or nothing.

    The patch is checked first (`git apply --check`): when any hunk does not apply,
    nothing is changed.
    """
    if not project.is_dir():
        fail(f"{project} is not a directory")
    # The patch's paths are relative to the project root the run was started from.
    project = project_root(project)
    cluster = connect(kubeconfig, context, namespace)
    run = _resolve_run(cluster, run_name)
    patch = report_patch(cluster, run)
    if not patch.strip():
        typer.echo(f"selfcodingrun/{run.name} accepted no improvements; nothing to apply")
        return
    checked = _git_apply(project, patch, "--check")
    if checked.returncode != 0:
        reason = checked.stderr.strip().splitlines()[0] if checked.stderr.strip() else "rejected"
        fail(
            f"the patch of selfcodingrun/{run.name} does not apply to {project.resolve()}: {reason}"
        )
    applied = _git_apply(project, patch)
    if applied.returncode != 0:
        fail(f"git apply failed after its check passed: {applied.stderr.strip()}")
    files = sorted({line[6:] for line in patch.splitlines() if line.startswith("+++ b/")})
    typer.echo(f"selfcodingrun/{run.name}: applied to {len(files)} file(s): {', '.join(files)}")
