"""One way to fail: a single `error: ...` line on stderr and a non-zero exit.

Commands raise `CliError` for failures the user can act on. Failures of the API
client that reach the top (an API error, an unreachable server, an object the API
models refuse) are turned into the same one-line form by `TarsGroup`, the root
command class, so a user mistake never shows a traceback. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from typer import _click

from tarscli.help_style import HelpGroup

if TYPE_CHECKING:
    from tarscli.api_client import ApiError

EXIT_FAILURE = 1


class CliError(Exception):
    """A failure the user can act on; its message is printed as one line."""

    def __init__(self, message: str, *, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def one_line(text: str) -> str:
    """Collapse whitespace so a multi-line server message stays on one line."""
    return re.sub(r"\s+", " ", text).strip()


def report(message: str) -> None:
    """Print `error: MESSAGE` on stderr, unwrapped (rich would wrap at the terminal width)."""
    typer.echo(f"error: {one_line(message)}", err=True)


def fail(message: str) -> NoReturn:
    raise CliError(message)


def api_message(error: ApiError) -> str:
    """The API server's own words for an error, falling back to the HTTP status line."""
    message = str(error.status_object.get("message") or "").strip()
    if message:
        return message
    return error.body.strip() or f"{error.status} {error.reason}"


def _describe_api_error(error: ApiError) -> str:
    message = api_message(error)
    match error.status:
        case 401:
            return (
                f"unauthorized: the Kubernetes API refused the kubeconfig's credentials ({message}); "
                "check the user of the current context"
            )
        case 403:
            return f"forbidden: {message}"
        case 404:
            return f"not found: {message}"
        case 409:
            return f"conflict: {message}"
        case 422:
            return f"the API server refused the object: {message}"
        case _:
            return f"the Kubernetes API answered {error.status} {error.reason}: {message}"


def describe_failure(error: BaseException) -> str | None:
    """The one-line message for a known failure, or None when `error` is a bug."""
    if isinstance(error, CliError):
        return error.message
    # Imported here, not above: a command that failed before reaching the API never loads them.
    import pydantic

    from tarscli.api_client import ApiError, Unreachable

    if isinstance(error, ApiError):
        return _describe_api_error(error)
    if isinstance(error, Unreachable):
        return f"cannot reach the Kubernetes API at {error.server}: {error.reason}"
    if isinstance(error, pydantic.ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or error.title}: {problem['msg']}"
            for problem in error.errors()
        )
        return f"invalid {error.title}: {problems}"
    return None


class TarsGroup(HelpGroup):
    """Root command class: every command below it fails through `describe_failure`.

    Doing this in the command tree (not around `app()`) means tests driving the
    app with typer's CliRunner see exactly what a user sees.
    """

    def invoke(self, ctx: _click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort):
            raise
        except Exception as error:
            message = describe_failure(error)
            if message is None:
                raise
            report(message)
            raise typer.Exit(
                error.exit_code if isinstance(error, CliError) else EXIT_FAILURE
            ) from None
