"""`tarscli replica`: the TarsReplica objects that serve the four roles — list, create,
start, stop, remove, status — and their own APIs: send, api.

Each object command is one read or write of the objects through tarscli.kube; the tables
come from tarscli.views. `send` and `api` ask a replica itself (tarscli.replica_api).
"""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from tars_api.names import CLI_LABELS
from tars_api.replica import MAX_REPLICAS, TarsReplica
from tars_api.vocabulary import EngineName, Role

from tarscli import options, output, replica_api, views
from tarscli.cluster_ops import create_if_absent
from tarscli.errors import CliError
from tarscli.help_style import TarsTyper
from tarscli.kube import Cluster, connect

app = TarsTyper(
    help=(
        "Manage role replicas (TarsReplica objects): list, create, start, stop, remove, status; "
        "send requests to their APIs. The operator turns each into a Deployment and a Service."
    ),
    no_args_is_help=True,
)

NameArgument = Annotated[
    str, typer.Argument(metavar="NAME", help="Name of the TarsReplica.", show_default=False)
]


@app.command("list")
def list_replicas(
    output_format: options.OutputOption = output.OutputFormat.table,
    kubeconfig: options.KubeconfigOption = None,
    context: options.ContextOption = None,
    namespace: options.NamespaceOption = None,
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
        output.console().print(views.replicas_table(replicas))


@app.command("create")
def create(
    name: NameArgument,
    role: Annotated[
        Role,
        typer.Option(
            "--role",
            "-r",
            metavar=options.choices(Role),
            help="The role the pods serve.",
            show_default=False,
        ),
    ],
    replicas: Annotated[
        int, options.count("--replicas", min=0, max=MAX_REPLICAS, help="Number of pods.")
    ] = 1,
    engine: Annotated[
        EngineName | None,
        typer.Option(
            metavar=options.choices(EngineName),
            help="Generation engine (default: the operator's configuration).",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Model for the ollama engine (default: the operator's configuration).",
            show_default=False,
        ),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            metavar="IMAGE", help="Container image (default: the role's image).", show_default=False
        ),
    ] = None,
    kubeconfig: options.KubeconfigOption = None,
    context: options.ContextOption = None,
    namespace: options.NamespaceOption = None,
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
    created = create_if_absent(cluster, replica)
    if created is None:
        raise CliError(
            f'TarsReplica "{replica.name}" already exists in namespace "{cluster.namespace}"'
        )
    typer.echo(f"tarsreplica/{created.name} created (role {role.value}, {replicas} replica(s))")


def _set_suspend(name: str, suspend: bool, cluster: Cluster) -> TarsReplica:
    return cluster.replicas.merge_patch(name, {"spec": {"suspend": suspend}})


@app.command("start")
def start(
    name: NameArgument,
    kubeconfig: options.KubeconfigOption = None,
    context: options.ContextOption = None,
    namespace: options.NamespaceOption = None,
) -> None:
    """Resume a stopped TarsReplica (spec.suspend=false): its pods come back."""
    replica = _set_suspend(name, False, connect(kubeconfig, context, namespace))
    typer.echo(
        f"tarsreplica/{replica.name} started (suspend=false, {replica.spec.replicas} replica(s))"
    )


@app.command("stop")
def stop(
    name: NameArgument,
    kubeconfig: options.KubeconfigOption = None,
    context: options.ContextOption = None,
    namespace: options.NamespaceOption = None,
) -> None:
    """Stop a TarsReplica without removing it (spec.suspend=true): scaled to zero pods."""
    replica = _set_suspend(name, True, connect(kubeconfig, context, namespace))
    typer.echo(f"tarsreplica/{replica.name} stopped (suspend=true, scaled to 0)")


@app.command("remove")
def remove(
    name: NameArgument,
    kubeconfig: options.KubeconfigOption = None,
    context: options.ContextOption = None,
    namespace: options.NamespaceOption = None,
) -> None:
    """Delete a TarsReplica; its Deployment and Service go with it."""
    connect(kubeconfig, context, namespace).replicas.delete(name)
    typer.echo(f"tarsreplica/{name} removed")


@app.command("status")
def status(
    name: NameArgument,
    output_format: options.OutputOption = output.OutputFormat.table,
    kubeconfig: options.KubeconfigOption = None,
    context: options.ContextOption = None,
    namespace: options.NamespaceOption = None,
) -> None:
    """Show one TarsReplica: role, pods, phase, endpoint, capabilities and conditions."""
    replica = connect(kubeconfig, context, namespace).replicas.get(name)
    if output_format is output.OutputFormat.table:
        output.console().print(views.replica_details(replica))
    else:
        output.print_document(output.document(replica, TarsReplica), output_format)


class Method(enum.StrEnum):
    GET = "GET"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"
    HEAD = "HEAD"


TargetArgument = Annotated[
    str,
    typer.Argument(
        metavar="NAME|ROLE",
        help="A TarsReplica's name, or a role: the namespace's one replica serving it.",
        show_default=False,
    ),
]


def _payload(data: str | None) -> bytes | None:
    """--data as the JSON to send: inline, @FILE, or @- for stdin."""
    if data is None:
        return None
    if data.startswith("@"):
        source = data[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise CliError(f"cannot read --data {data}: {error}") from None
    else:
        text = data
    try:
        return json.dumps(json.loads(text)).encode()
    except ValueError as error:
        raise CliError(f"--data is not JSON: {error}") from None


@app.command("send")
def send(
    target: TargetArgument,
    path: Annotated[
        str,
        typer.Argument(
            metavar="PATH", help="The path on the replica, e.g. /info.", show_default=False
        ),
    ],
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            metavar="JSON|@FILE",
            help="The request's JSON body, inline or read from FILE (@- reads stdin).",
            show_default=False,
        ),
    ] = None,
    method: Annotated[
        Method | None,
        typer.Option(
            "--method",
            "-X",
            metavar=options.choices(Method),
            help="HTTP method (default: POST with --data, else GET).",
            case_sensitive=False,
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float, options.seconds("--timeout", help="Seconds to wait for the answer.")
    ] = 300,
    output_format: options.DocumentOption = output.DocumentFormat.json,
    kubeconfig: options.KubeconfigOption = None,
    context: options.ContextOption = None,
    namespace: options.NamespaceOption = None,
) -> None:
    """Send a request to a replica's API through the API server and print its JSON answer."""
    payload = _payload(data)
    verb = method or (Method.POST if payload is not None else Method.GET)
    cluster = connect(kubeconfig, context, namespace)
    replica = replica_api.find_replica(cluster, target)
    answer = replica_api.send(cluster, replica, verb.value, path, payload, timeout)
    if answer is None:
        typer.echo(f"{verb.value} {path}: answered without a body", err=True)
    else:
        output.print_document(answer, output_format)


@app.command("api")
def api(
    target: TargetArgument,
    output_format: options.DocumentOption = output.DocumentFormat.json,
    kubeconfig: options.KubeconfigOption = None,
    context: options.ContextOption = None,
    namespace: options.NamespaceOption = None,
) -> None:
    """Print a replica's OpenAPI document: every path its role serves, with its types."""
    cluster = connect(kubeconfig, context, namespace)
    replica = replica_api.find_replica(cluster, target)
    output.print_document(replica_api.openapi(cluster, replica), output_format)
