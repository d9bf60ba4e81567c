"""`tarscli replica`: manage the TarsReplica objects that serve the four roles."""

from __future__ import annotations

from typing import Annotated

import typer
from kubernetes.client.exceptions import ApiException
from rich.console import RenderableType
from rich.table import Table
from tars_api.meta import Condition
from tars_api.names import CLI_LABELS
from tars_api.replica import MAX_REPLICAS, TarsReplica
from tars_api.vocabulary import EngineName, Role

from tarscli import output
from tarscli.errors import CliError
from tarscli.kube import Cluster, ContextOption, KubeconfigOption, NamespaceOption, connect

app = typer.Typer(
    help=(
        "Manage role replicas (TarsReplica objects): list, create, start, stop, remove, status. "
        "The operator turns each into a Deployment and a Service."
    ),
    no_args_is_help=True,
)

NameArgument = Annotated[
    str, typer.Argument(metavar="NAME", help="Name of the TarsReplica.", show_default=False)
]
OPERATOR_DEFAULT = "(the operator's default)"


def create_replica(cluster: Cluster, replica: TarsReplica) -> TarsReplica:
    """Create `replica`; an existing one of that name is a CliError saying so."""
    try:
        return cluster.replicas.create(replica)
    except ApiException as error:
        if error.status == 409:
            raise CliError(
                f'TarsReplica "{replica.name}" already exists in namespace "{cluster.namespace}"'
            ) from error
        raise


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
        (
            "Phase",
            output.text(status.phase) if status else "- (no status yet: is the operator running?)",
        ),
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


@app.command("list")
def list_replicas(
    output_format: output.OutputOption = output.OutputFormat.table,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """List the TarsReplicas in the namespace: role, desired and ready pods, phase, endpoint, age."""
    cluster = connect(kubeconfig, context, namespace)
    replicas = sorted(cluster.replicas.list(), key=lambda replica: replica.name)
    if output_format is not output.OutputFormat.table:
        output.print_document(output.document(replicas, TarsReplica), output_format)
    elif not replicas:
        typer.echo(
            f'No TarsReplicas in namespace "{cluster.namespace}"; create them with "tarscli self-code setup".'
        )
    else:
        output.console().print(replicas_table(replicas))


@app.command("create")
def create(
    name: NameArgument,
    role: Annotated[
        Role, typer.Option("--role", "-r", help="The role the pods serve.", show_default=False)
    ],
    replicas: Annotated[
        int, typer.Option("--replicas", min=0, max=MAX_REPLICAS, help="Number of pods.")
    ] = 1,
    engine: Annotated[
        EngineName | None,
        typer.Option(
            help="Generation engine (default: the operator's configuration).", show_default=False
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model for the ollama engine (default: the operator's configuration).",
            show_default=False,
        ),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(help="Container image (default: the role's image).", show_default=False),
    ] = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Create a TarsReplica: ROLE pods behind one Service."""
    cluster = connect(kubeconfig, context, namespace)
    replica = TarsReplica.build(
        name,
        role,
        labels=CLI_LABELS,
        replicas=replicas,
        engine=engine,
        model=model,
        image=image,
    )
    created = create_replica(cluster, replica)
    typer.echo(f"tarsreplica/{created.name} created (role {role.value}, {replicas} replica(s))")


def _set_suspend(name: str, suspend: bool, cluster: Cluster) -> TarsReplica:
    return cluster.replicas.merge_patch(name, {"spec": {"suspend": suspend}})


@app.command("start")
def start(
    name: NameArgument,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Resume a stopped TarsReplica (spec.suspend=false): its pods come back."""
    replica = _set_suspend(name, False, connect(kubeconfig, context, namespace))
    typer.echo(
        f"tarsreplica/{replica.name} started (suspend=false, {replica.spec.replicas} replica(s))"
    )


@app.command("stop")
def stop(
    name: NameArgument,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Stop a TarsReplica without removing it (spec.suspend=true): scaled to zero pods."""
    replica = _set_suspend(name, True, connect(kubeconfig, context, namespace))
    typer.echo(f"tarsreplica/{replica.name} stopped (suspend=true, scaled to 0)")


@app.command("remove")
def remove(
    name: NameArgument,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Delete a TarsReplica; its Deployment and Service go with it."""
    connect(kubeconfig, context, namespace).replicas.delete(name)
    typer.echo(f"tarsreplica/{name} removed")


@app.command("status")
def status(
    name: NameArgument,
    output_format: output.OutputOption = output.OutputFormat.table,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Show one TarsReplica: role, pods, phase, endpoint, capabilities and conditions."""
    replica = connect(kubeconfig, context, namespace).replicas.get(name)
    if output_format is output.OutputFormat.table:
        output.console().print(replica_details(replica))
    else:
        output.print_document(output.document(replica, TarsReplica), output_format)
