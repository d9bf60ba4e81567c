"""The options more than one command takes, each declared once with its help and metavar.

Cluster commands take `--kubeconfig`, `--context` and `-n/--namespace` the way kubectl
does (tarscli.kube reads them) and `-o/--output` for what they print; a run, local or in
a cluster, takes `-t/--target`; the commands that run the workflow on this machine
(`self-code run`, `improve`, the demo) share the engine, model, auto-apply and test
options. Every option that takes a value names it in capitals (`SECONDS`, `NAME`) or lists
its choices, for help in kubectl's style (tarscli.help_style); `seconds` and `count` make
the two kinds of number options.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ConfigDict
from tars_api.vocabulary import EngineName, SandboxMode

from tarscli.output import DocumentFormat, OutputFormat

CLUSTER_PANEL = "Cluster"


def choices(kind: type[Enum]) -> str:
    """A metavar listing an enum's values: `static|ollama`."""
    return "|".join(str(member.value) for member in kind)


def seconds(*names: str, help: str, **settings: Any) -> Any:
    """An option that takes a duration: `--timeout SECONDS`, one at least."""
    return typer.Option(*names, min=1, metavar="SECONDS", help=help, **settings)


def count(*names: str, help: str, **settings: Any) -> Any:
    """An option that takes a number of things: `--max-files N`."""
    return typer.Option(*names, metavar="N", help=help, **settings)


def _cluster(*names: str, metavar: str, help: str) -> Any:
    # Their defaults come from the kubeconfig, so the help says them in words.
    return typer.Option(
        *names, metavar=metavar, help=help, show_default=False, rich_help_panel=CLUSTER_PANEL
    )


KubeconfigOption = Annotated[
    Path | None,
    _cluster(
        "--kubeconfig",
        metavar="PATH",
        help="Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).",
    ),
]
ContextOption = Annotated[
    str | None,
    _cluster(
        "--context",
        metavar="NAME",
        help="The kubeconfig context to use (default: its current context).",
    ),
]
NamespaceOption = Annotated[
    str | None,
    _cluster(
        "--namespace",
        "-n",
        metavar="NAME",
        help='Namespace of the objects (default: the context\'s namespace, else "default").',
    ),
]
OutputOption = Annotated[
    OutputFormat,
    typer.Option(
        "--output",
        "-o",
        metavar=choices(OutputFormat),
        help="Output format: table (for people), json or yaml (the whole object, for tools).",
        case_sensitive=False,
    ),
]
DocumentOption = Annotated[
    DocumentFormat,
    typer.Option(
        "--output",
        "-o",
        metavar=choices(DocumentFormat),
        help="Output format: json or yaml.",
        case_sensitive=False,
    ),
]

TargetsOption = Annotated[
    list[str],
    typer.Option(
        "--target",
        "-t",
        metavar="DIR",
        help="Directory to improve, inside the project (repeat for several).",
        show_default=False,
    ),
]

# --- the workflow on this machine -------------------------------------------------------

EngineOption = Annotated[
    EngineName | None,
    typer.Option(
        "--engine",
        metavar=choices(EngineName),
        help="static (ruff's fixes) or ollama (a local model). "
        "Default: ollama when OLLAMA_HOST answers and has the model, else static.",
        case_sensitive=False,
        show_default=False,
    ),
]
ModelOption = Annotated[
    str, typer.Option("--model", metavar="NAME", help="Model for the ollama engine.")
]
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
        metavar="COMMAND",
        help="The project's test command (default: pytest when the project uses it).",
        show_default=False,
    ),
]
TestTimeoutOption = Annotated[
    float, seconds("--test-timeout", help="Seconds one test run may take before it is killed.")
]
SandboxOption = Annotated[
    SandboxMode,
    typer.Option(
        "--sandbox",
        metavar=choices(SandboxMode),
        help="Run the tests in bubblewrap: auto (when bwrap works here, saying so when not), "
        "required (refuse without it) or off.",
        case_sensitive=False,
    ),
]
TestEnvOption = Annotated[
    list[str] | None,
    typer.Option(
        "--test-env",
        metavar="NAME",
        help="Pass this variable of your environment on to the tests (repeat for several); "
        "they get only PATH, the locale and their virtualenv otherwise.",
        show_default=False,
    ),
]
TestNetworkOption = Annotated[
    bool,
    typer.Option("--test-network", help="Let the tests reach the network (cut off by default)."),
]
NoLearningOption = Annotated[
    bool,
    typer.Option(
        "--no-learning",
        help="Keep this run out of the learning store: nothing is read from it, "
        "nothing is recorded in it.",
    ),
]
UnsafeOption = Annotated[
    bool,
    typer.Option(
        "--unsafe-fixes", help="Also use ruff's unsafe fixes (still proven by the tests)."
    ),
]


class WorkflowChoices(BaseModel):
    """How a run on this machine works: the values of the ten options above.

    A command that takes them all passes its parsed parameters (`ctx.params`); the
    names are the options' parameter names, and a missing one fails validation.
    """

    model_config = ConfigDict(frozen=True)

    auto_apply: bool
    engine: EngineName | None
    model: str
    unsafe_fixes: bool
    no_learning: bool
    test_command: str | None
    test_timeout: float
    sandbox: SandboxMode
    test_env: list[str] | None
    test_network: bool
