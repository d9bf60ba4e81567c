"""`tarscli demo`: self-contained demonstrations of the self-coding workflow.

`self-code-demo` improves the bundled sample project: on this machine by default
(tarscli.local_ops), in a new kind cluster or in the current cluster (tarscli.kind_demo).
"""

from __future__ import annotations

from typing import Annotated

import typer
from tars_api.vocabulary import DEFAULT_MODEL

from tarscli import kind_demo, options, output
from tarscli.errors import fail
from tarscli.help_style import TarsTyper

app = TarsTyper(
    help="Self-contained demonstrations of the self-coding workflow.",
    no_args_is_help=True,
)


@app.command("self-code-demo")
def self_code_demo(
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the temporary repository and print where it is.")
    ] = False,
    engine: options.EngineOption = None,
    model: options.ModelOption = DEFAULT_MODEL,
    kind: Annotated[
        bool,
        typer.Option(
            "--kind",
            help="In a new kind cluster (docker, else podman): build and load the images, "
            "install the chart, run on a copy of the sample project mounted in the node.",
        ),
    ] = False,
    kind_node_image: Annotated[
        str | None,
        typer.Option(
            "--kind-node-image",
            metavar="IMAGE",
            help="The kind node image (default: kind's own); make kind-demo builds one.",
        ),
    ] = None,
    kind_cluster: Annotated[
        str,
        typer.Option(
            "--kind-cluster",
            metavar="NAME",
            help="The kind cluster's name; its project copy is .dev/kind-NAME.",
        ),
    ] = kind_demo.KIND_CLUSTER,
    in_cluster: Annotated[
        bool,
        typer.Option(
            "--cluster",
            help="In the current kube-context: install the chart and run on a node directory "
            "(--project-path).",
        ),
    ] = False,
    project_path: Annotated[
        str,
        typer.Option(
            "--project-path", metavar="PATH", help="The sample project's directory on the node."
        ),
    ] = kind_demo.NODE_PROJECT_PATH,
    helm: Annotated[
        str, typer.Option("--helm", metavar="PATH", help="The helm executable.")
    ] = "helm",
    helm_set: Annotated[
        list[str] | None,
        typer.Option(
            "--helm-set",
            metavar="KEY=VALUE",
            help="KEY=VALUE for the chart (helm --set); repeatable.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the external commands and stop.")
    ] = False,
    timeout: Annotated[
        int, options.seconds("--timeout", help="Seconds to wait for the replicas to be Ready.")
    ] = kind_demo.REPLICAS_TIMEOUT_SECONDS,
    kubeconfig: options.KubeconfigOption = None,
    context: options.ContextOption = None,
    namespace: options.NamespaceOption = None,
) -> None:
    """Improve the sample project: on this machine (default), in kind (--kind) or in the
    current cluster (--cluster)."""
    if not (kind or in_cluster):
        # Imported here: the engine it runs is the largest import of the CLI.
        from tarscli.local_ops import sample_demo

        sample_demo(output.console(), keep=keep, engine=engine, model=model)
        return
    if kind and in_cluster:
        fail("--kind and --cluster exclude each other")
    kind_demo.run_demo(
        kind_demo.repository_root(),
        kind=kind,
        node_image=kind_node_image,
        cluster_name=kind_cluster,
        project_path=project_path,
        namespace=namespace or kind_demo.DEMO_NAMESPACE,
        helm=helm,
        kubeconfig=kubeconfig,
        context=context,
        dry_run=dry_run,
        settings=helm_set or (),
        timeout_seconds=timeout,
    )
