"""One way to fail: a single `error: ...` line on stderr and a non-zero exit.

Commands raise `CliError` for failures the user can act on. Failures of the
Kubernetes client that reach the top (an API error, an unreachable server, a bad
kubeconfig) are turned into the same one-line form by `TarsGroup`, the root
command class, so a user mistake never shows a traceback. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn

import pydantic
import typer
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from typer import _click

from tarscli.help_style import HelpGroup

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


def api_status(error: ApiException) -> dict[str, Any]:
    """The `Status` object the API server sent with an error, or {} when the body is not one."""
    try:
        body = json.loads(error.body or "")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) and body.get("kind") == "Status" else {}


def api_message(error: ApiException) -> str:
    """The API server's own words for an error, falling back to the HTTP status line."""
    status = api_status(error)
    message = str(status.get("message") or "").strip()
    if message:
        return message
    body = (error.body or "").strip() if isinstance(error.body, str) else ""
    return body or f"{error.status} {error.reason}"


def _describe_api_error(error: ApiException) -> str:
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


def _server_url(pool: Any) -> str:
    if pool is None:
        return "the configured server"
    return f"{pool.scheme}://{pool.host}:{pool.port}"


def _connection_reason(reason: BaseException | None) -> str:
    text = one_line(str(reason)) if reason is not None else "no answer"
    # urllib3 prefixes the OS error with the connection object's repr; keep the OS's words.
    for marker in ("Failed to establish a new connection: ", "Failed to resolve "):
        if marker in text:
            return text.split(marker, 1)[1].rstrip(")")
    return text


def describe_failure(error: BaseException) -> str | None:
    """The one-line message for a known failure, or None when `error` is a bug."""
    if isinstance(error, CliError):
        return error.message
    if isinstance(error, ApiException):
        return _describe_api_error(error)
    if isinstance(error, urllib3.exceptions.HTTPError):
        # After its retries urllib3 raises MaxRetryError; the failure itself is its reason.
        reason = error.reason if isinstance(error, urllib3.exceptions.MaxRetryError) else error
        return (
            f"cannot reach the Kubernetes API at {_server_url(getattr(error, 'pool', None))}: "
            f"{_connection_reason(reason)}"
        )
    if isinstance(error, ConfigException):
        return f"invalid kubeconfig: {error}"
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
