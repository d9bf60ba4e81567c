"""`tars-replica`: serve one role of TARS over HTTP (`tars-replica serve --role ROLE`).

This is the one place that knows every role's service: the workers' from
`transports.server`, the coordinator's from `cluster.coordinator_service`. It sits above
both layers so neither has to reach up to the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer
import uvicorn
from fastapi import FastAPI
from tars_api.names import REPLICA_PORT, ReplicaEnv
from tars_api.vocabulary import EngineName, Role

from tars_engine.cluster import coordinator_service
from tars_engine.core.settings import ENGINE_VERSION, ConfigurationError, ReplicaSettings
from tars_engine.transports.server import WORKER_SERVICES, RoleService, role_app

SERVICES: dict[Role, Callable[[ReplicaSettings], RoleService]] = {
    **WORKER_SERVICES,
    Role.coordinator: coordinator_service.service,
}


def create_app(role: Role, settings: ReplicaSettings | None = None) -> FastAPI:
    """The HTTP API of `role` with these settings (default: from the environment)."""
    settings = (settings or ReplicaSettings.from_env()).model_copy(update={"role": role})
    return role_app(role, SERVICES[role](settings), settings)


cli = typer.Typer(add_completion=False, no_args_is_help=True, help="A TARS role replica.")


def _print_version(requested: bool) -> None:
    if requested:
        typer.echo(f"tars-replica {ENGINE_VERSION}")
        raise typer.Exit()


@cli.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """A TARS role replica (analyzer, generator, tester or coordinator)."""


@cli.command()
def serve(
    role: Annotated[
        Role | None, typer.Option(envvar=ReplicaEnv.role, help="Role to serve", show_default=False)
    ] = None,
    host: Annotated[str, typer.Option(envvar=ReplicaEnv.host, help="Address to listen on")] = (
        "127.0.0.1"
    ),
    port: Annotated[
        int, typer.Option(envvar=ReplicaEnv.port, help="Port to listen on")
    ] = REPLICA_PORT,
    engine: Annotated[
        EngineName | None,
        typer.Option(envvar=ReplicaEnv.engine, help="Default engine", show_default=False),
    ] = None,
    model: Annotated[
        str | None, typer.Option(envvar=ReplicaEnv.model, help="Default model", show_default=False)
    ] = None,
    ollama_host: Annotated[
        str | None,
        typer.Option(envvar=ReplicaEnv.ollama_host, help="Ollama URL", show_default=False),
    ] = None,
    scratch_dir: Annotated[
        str | None,
        typer.Option(
            envvar=ReplicaEnv.scratch_dir, help="Writable cache and work dir", show_default=False
        ),
    ] = None,
) -> None:
    """Serve one role over HTTP until interrupted."""
    try:
        settings = ReplicaSettings.from_env(
            role=role,
            engine=engine,
            model=model,
            ollama_host=ollama_host,
            scratch_dir=scratch_dir,
        )
    except ValueError as exc:
        typer.echo(f"error: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from exc
    if settings.role is None:
        typer.echo(f"error: no role given; use --role or set {ReplicaEnv.role}", err=True)
        raise typer.Exit(2)
    try:
        app = create_app(settings.role, settings)
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    uvicorn.run(app, host=host, port=port, log_level="info", lifespan="off")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
