"""`tarscli self-code`: SelfCodingRun objects in a cluster — setup, start, status, stop, diff, apply.

The group also holds the commands that run on this machine (`run`, `improve`, added here
from tarscli.commands.local), and `status` and `stop` take `--local` for them.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from tars_api.names import CLI_LABELS
from tars_api.replica import TarsReplica
from tars_api.run import DEFAULT_PACKAGE_INDEX, SelfCodingRun, TestEnvironment
from tars_api.vocabulary import EngineName, Role, SandboxMode

from tarscli import cluster_ops, coordinator_access, options, output, views
from tarscli.api_client import ApiError
from tarscli.commands import local as local_runs
from tarscli.errors import CliError, fail
from tarscli.help_style import TarsTyper
from tarscli.kube import connect

# `start` and `apply` import the project's upload where they run: it loads the engine's
# file selection, which no other command needs.

app = TarsTyper(
    help=(
        "Improve a codebase with the self-coding workflow. On this machine: `run` and `improve`. "
        "In a cluster: `setup` the role replicas, then `start`, follow (`status --watch`) and "
        "`stop` SelfCodingRuns."
    ),
    no_args_is_help=True,
)

DEFAULT_SETUP_TIMEOUT_SECONDS = 300
EXIT_INTERRUPTED = 130

RunArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="RUN",
        help="Name of the SelfCodingRun (default: the latest in the namespace).",
        show_default=False,
    ),
]


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
        options.seconds(
            "--timeout", help="Seconds to wait for the replicas to be Ready before failing."
        ),
    ] = DEFAULT_SETUP_TIMEOUT_SECONDS,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model to look for on the generator's Ollama server (default: the generator's own).",
            show_default=False,
        ),
    ] = None,
    kubeconfig: options.KubeconfigOption = None,
    context: options.ContextOption = None,
    namespace: options.NamespaceOption = None,
) -> None:
    """Prepare a namespace for self-coding runs: the four role replicas, ready to work.

    Checks that the CRDs are installed (--install-crds installs them), creates the
    coordinator's ServiceAccount, Role and RoleBinding when absent, the
    analyzer, generator, tester and coordinator TarsReplicas (existing ones are left
    as they are), waits until all four are Ready, and reports whether the generator's
    Ollama server has the model that runs with --engine ollama need.
    """
    cluster = connect(kubeconfig, context, namespace)
    deadline = time.monotonic() + timeout
    if install_crds_flag:
        cluster_ops.install_crds(cluster, deadline)
    else:
        cluster.require_crds()
    replicas: list[TarsReplica] = []
    for role in Role:
        created = cluster_ops.create_if_absent(
            cluster, TarsReplica.build(role.value, role, labels=CLI_LABELS)
        )
        if created is not None:
            replicas.append(created)
            typer.echo(f"tarsreplica/{role.value} created")
            continue
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
        for line in coordinator_access.ensure(cluster.api, cluster.namespace):
            typer.echo(line)
    except ApiError as error:
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
    cluster_ops.wait_for_replicas(cluster, replicas, timeout, deadline)
    typer.echo(f'All {len(replicas)} role replicas are Ready in namespace "{cluster.namespace}".')
    generator = next((item for item in replicas if item.spec.role is Role.generator), None)
    if generator is not None:
        model_ready, line = cluster_ops.model_report(cluster, generator, model)
        typer.echo(line if model_ready else f"warning: {line}", err=not model_ready)


# What each start option must be, said as the user typed it.
_ENVIRONMENT_OPTIONS = {
    "extras": ("--extra", "an extra's name (letters, digits, '.', '_', '-')"),
    "setup_command": ("--setup-command", "at most 64 words of 4096 characters"),
    "package_index": ("--package-index", "an http:// or https:// URL"),
    "image": ("--test-image", "an image reference such as registry.example.org/project-tests:1"),
}


def test_environment(
    install: bool,
    extras: list[str] | None,
    setup_command: str | None,
    package_index: str | None,
    test_image: str | None = None,
) -> TestEnvironment | None:
    """The run's testEnvironment from the start options; None when none asks for one."""
    installs = install or extras or setup_command is not None or package_index is not None
    if test_image is not None and installs:
        raise CliError(
            "--test-image cannot go with --install, --extra, --setup-command or "
            "--package-index: the image holds the project's test dependencies already"
        )
    if not installs and test_image is None:
        return None
    settings: dict[str, object] = {}
    if test_image is not None:
        settings["image"] = test_image
    if extras:
        settings["extras"] = extras
    if package_index is not None:
        settings["package_index"] = package_index
    if setup_command is not None:
        try:
            settings["setup_command"] = shlex.split(setup_command)
        except ValueError as error:
            raise CliError(
                f"--setup-command {setup_command!r} cannot be parsed: {error}"
            ) from error
        if not settings["setup_command"]:
            raise CliError("--setup-command must not be empty")
    try:
        return TestEnvironment.build_strict(**settings)
    except ValidationError as error:
        field = str(error.errors()[0]["loc"][0])
        option, expected = _ENVIRONMENT_OPTIONS[field]
        raise CliError(f"{option} must be {expected}") from None


@app.command()
def start(
    targets: options.TargetsOption,
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
            metavar=options.choices(EngineName),
            help="Generation engine: static (ruff fixes) or ollama (a local model).",
            show_default="static",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="Model for the ollama engine.", show_default="llama3"),
    ] = None,
    max_files: Annotated[
        int | None,
        options.count("--max-files", min=1, help="Budget: files to work on.", show_default="20"),
    ] = None,
    test_command: Annotated[
        str | None,
        typer.Option(
            "--test-command",
            metavar="COMMAND",
            help='The project\'s test command, e.g. "pytest -q" (default: detected).',
            show_default=False,
        ),
    ] = None,
    sandbox: Annotated[
        SandboxMode | None,
        typer.Option(
            "--sandbox",
            metavar=options.choices(SandboxMode),
            help="bubblewrap inside the tester pod: auto (where the pod allows it, the status "
            "says when not), required or off.",
            case_sensitive=False,
            show_default="auto",
        ),
    ] = None,
    test_env: Annotated[
        list[str] | None,
        typer.Option(
            "--test-env",
            metavar="NAME",
            help="Pass this variable of the tester's environment on to the tests (repeat).",
            show_default=False,
        ),
    ] = None,
    test_network: options.TestNetworkOption = False,
    install: Annotated[
        bool,
        typer.Option(
            "--install",
            help="Run the tests in a virtualenv the tester makes: the project installed with "
            "its test extras (pip install .[test] pytest), kept for runs with the same "
            "dependency files.",
        ),
    ] = False,
    test_extras: Annotated[
        list[str] | None,
        typer.Option(
            "--extra",
            metavar="NAME",
            help="Extra to install with the project instead of 'test' (repeat; implies --install).",
            show_default=False,
        ),
    ] = None,
    setup_command: Annotated[
        str | None,
        typer.Option(
            metavar="CMD",
            help="Fill the tests' virtualenv with this command instead, run in the project "
            "with pip in it, e.g. 'pip install -r requirements.txt pytest' (implies --install).",
            show_default=False,
        ),
    ] = None,
    package_index: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="The only package index the setup may use (implies --install).",
            show_default=DEFAULT_PACKAGE_INDEX,
        ),
    ] = None,
    test_image: Annotated[
        str | None,
        typer.Option(
            "--test-image",
            metavar="IMAGE",
            help="Run the tests in a tester of this image, made for the run: the tars-replica "
            "image plus the project's test dependencies; its own Python runs them, no "
            "virtualenv is made.",
            show_default=False,
        ),
    ] = None,
    no_learning: options.NoLearningOption = False,
    kubeconfig: options.KubeconfigOption = None,
    context: options.ContextOption = None,
    namespace: options.NamespaceOption = None,
) -> None:
    """Start a SelfCodingRun on the targets of this project; prints the run's name.

    The project is the git work tree around the current directory (else the current
    directory). Its files (git-tracked plus untracked, not ignored) are uploaded in a
    ConfigMap that the run owns, so deleting the run removes the upload too.
    """
    from tarscli.local_ops import env_names
    from tarscli.upload import build_archive, project_root, require_python_files, resolve_targets

    cwd = Path.cwd()
    root = project_root(cwd)
    relative_targets = resolve_targets(root, cwd, targets)
    require_python_files(root, relative_targets)
    try:
        test_argv = shlex.split(test_command) if test_command is not None else None
    except ValueError as error:
        raise CliError(f"--test-command {test_command!r} cannot be parsed: {error}") from error
    if test_argv == []:
        raise CliError("--test-command must not be empty (leave it out to detect the test command)")
    environment = test_environment(install, test_extras, setup_command, package_index, test_image)
    archive = build_archive(root, relative_targets)
    run = cluster_ops.upload_run(
        archive,
        relative_targets,
        auto_apply=auto_apply,
        engine=engine,
        model=model,
        max_files=max_files,
        test_command=test_argv,
        sandbox=sandbox,
        test_env=env_names(test_env) or None,
        test_network=test_network or None,
        test_environment=environment,
        learning=False if no_learning else None,
    )
    cluster = connect(kubeconfig, context, namespace)
    cluster.require_crds()
    created = cluster_ops.create_with_upload(cluster, run, archive)
    typer.echo(
        f"Uploaded {len(archive.files)} files ({views.human_size(archive.size)}) from {root} to "
        f"configmap/{cluster_ops.upload_of(run).config_map}; "
        f'follow with "tarscli self-code status {created.name} --watch".',
        err=True,
    )
    typer.echo(created.name)


@app.command()
def status(
    run_name: RunArgument = None,
    output_format: options.OutputOption = output.OutputFormat.table,
    follow: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Follow the run with a progress bar until it ends (Ctrl-C to leave).",
        ),
    ] = False,
    local: Annotated[
        bool,
        typer.Option(
            "--local", help="Show the run made on this machine (`self-code run`) in this project."
        ),
    ] = False,
    kubeconfig: options.KubeconfigOption = None,
    context: options.ContextOption = None,
    namespace: options.NamespaceOption = None,
) -> None:
    """Show a run: phase, stage, current file, times, statistics, conditions, latest results.

    Conditions say why a run is waiting (e.g. no coordinator replica is ready).
    """
    if local:
        local_runs.status_local(output_format)
        return
    cluster = connect(kubeconfig, context, namespace)
    run = cluster_ops.resolve_run(cluster, run_name)
    if follow:
        try:
            if output_format is output.OutputFormat.table:
                run = cluster_ops.follow_run(cluster, run.name, output.console(), run) or run
            else:
                cluster_ops.follow_documents(cluster, run.name, output_format, run)
                return
        except KeyboardInterrupt:
            typer.echo(
                f'Stopped watching; the run goes on ("tarscli self-code stop {run.name}" stops it).',
                err=True,
            )
            raise typer.Exit(EXIT_INTERRUPTED) from None
    if output_format is output.OutputFormat.table:
        output.console().print(views.run_details(run))
    else:
        output.print_document(output.document(run, SelfCodingRun), output_format)


@app.command()
def stop(
    run_name: RunArgument = None,
    local: Annotated[
        bool,
        typer.Option("--local", help="Stop the run going on on this machine in this project."),
    ] = False,
    kubeconfig: options.KubeconfigOption = None,
    context: options.ContextOption = None,
    namespace: options.NamespaceOption = None,
) -> None:
    """Ask a run to stop (spec.stop=true); improvements already accepted are kept."""
    if local:
        local_runs.stop_local()
        return
    cluster = connect(kubeconfig, context, namespace)
    run = cluster_ops.resolve_run(cluster, run_name)
    if run.is_terminal:
        typer.echo(
            f"selfcodingrun/{run.name} has already ended ({views.brief_phase(run)}); nothing to stop"
        )
        return
    if run.spec.stop:
        typer.echo(
            f"selfcodingrun/{run.name}: stop was already requested ({views.brief_phase(run)})"
        )
        return
    stopped = cluster.runs.merge_patch(run.name, {"spec": {"stop": True}})
    typer.echo(f"selfcodingrun/{stopped.name}: stop requested ({views.brief_phase(stopped)})")


@app.command()
def diff(
    run_name: RunArgument = None,
    kubeconfig: options.KubeconfigOption = None,
    context: options.ContextOption = None,
    namespace: options.NamespaceOption = None,
) -> None:
    """Print the patch of a run's accepted improvements (for review or `git apply`)."""
    cluster = connect(kubeconfig, context, namespace)
    patch = cluster_ops.report_patch(cluster, cluster_ops.resolve_run(cluster, run_name))
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
            "--project",
            "-C",
            metavar="DIR",
            help="The local checkout the run was started from.",
            file_okay=False,
        ),
    ] = Path("."),
    kubeconfig: options.KubeconfigOption = None,
    context: options.ContextOption = None,
    namespace: options.NamespaceOption = None,
) -> None:
    """Apply a run's accepted improvements to the local tree, all or nothing.

    The patch is checked first (`git apply --check`): when any hunk does not apply,
    nothing is changed.
    """
    from tarscli.upload import project_root

    if not project.is_dir():
        fail(f"{project} is not a directory")
    # The patch's paths are relative to the project root the run was started from.
    project = project_root(project)
    cluster = connect(kubeconfig, context, namespace)
    run = cluster_ops.resolve_run(cluster, run_name)
    patch = cluster_ops.report_patch(cluster, run)
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


# After the cluster commands, so that help lists them first.
app.command("run")(local_runs.run)
app.command("improve")(local_runs.improve)
