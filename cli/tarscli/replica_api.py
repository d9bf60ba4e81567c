"""A replica's own API from outside the cluster: what `tarscli replica send` and `api` do.

The replica is named, or found by its role among the namespace's shared replicas (a run's
own tester is not one of them). Requests go through the API server's service proxy
(`Cluster.send_to_replica`), so they carry the user's credentials and answer to RBAC.
Each way a request can go wrong is one line: no such replica, no ready pod, a path the
replica does not serve (looked up in its OpenAPI document), a refusal, an answer that is
not JSON.
"""

from __future__ import annotations

import json
from typing import Any

from tars_api.names import RUN_LABEL
from tars_api.replica import TarsReplica
from tars_api.vocabulary import Role

from tarscli import views
from tarscli.api_client import ApiError
from tarscli.errors import CliError, fail, one_line
from tarscli.kube import Cluster

# FastAPI serves every replica's OpenAPI document here.
OPENAPI_PATH = "/openapi.json"
SERVICE_UNAVAILABLE = 503
# The answers a replica gives for a path or method it has no route for.
NO_ROUTE = (404, 405)
_SHOWN_CHARACTERS = 60


def find_replica(cluster: Cluster, target: str) -> TarsReplica:
    """The TarsReplica named `target`, else the one shared replica of the role `target`."""
    try:
        # `tarscli self-code setup` names each replica after its role.
        return cluster.replicas.get(target)
    except CliError:
        if target not in {role.value for role in Role}:
            raise
    role = Role(target)
    shared = sorted(
        (
            replica
            for replica in cluster.replicas.list()
            if replica.spec.role is role and RUN_LABEL not in replica.metadata.labels
        ),
        key=lambda replica: replica.name,
    )
    if not shared:
        fail(
            f'no TarsReplica serves role {role.value} in namespace "{cluster.namespace}"; '
            'create them with "tarscli self-code setup"'
        )
    candidates = [replica for replica in shared if replica.is_ready] or shared
    if len(candidates) > 1:
        fail(
            f"{len(candidates)} TarsReplicas serve role {role.value} "
            f"({', '.join(replica.name for replica in candidates)}): name one of them"
        )
    return candidates[0]


def _label(replica: TarsReplica) -> str:
    return f'the {replica.spec.role.value} replica "{replica.name}"'


def _require_ready(replica: TarsReplica) -> None:
    if not replica.is_ready:
        fail(f"{_label(replica)} has no ready pod to answer: {views.replica_state(replica)}")


def send(
    cluster: Cluster,
    replica: TarsReplica,
    method: str,
    path: str,
    payload: bytes | None,
    timeout: float,
) -> Any:
    """The replica's JSON answer to `method path` (None when the answer is empty)."""
    _require_ready(replica)
    path = "/" + path.lstrip("/")
    try:
        answer = cluster.send_to_replica(
            replica, method, path, payload=payload, timeout=(10.0, timeout)
        )
    except ApiError as error:
        raise _refusal(cluster, replica, method, path, error) from error
    if not answer.body:
        return None
    try:
        return json.loads(answer.body)
    except ValueError:
        shown = one_line(answer.text)[:_SHOWN_CHARACTERS]
        raise CliError(
            f"{_label(replica)} answered {method} {path} with "
            f"{answer.content_type or 'no content type'}, not JSON: {shown!r}"
        ) from None


def openapi(cluster: Cluster, replica: TarsReplica) -> dict[str, Any]:
    """The replica's OpenAPI document."""
    document = send(cluster, replica, "GET", OPENAPI_PATH, None, timeout=60.0)
    if not isinstance(document, dict) or "paths" not in document:
        fail(f"{_label(replica)} answered GET {OPENAPI_PATH} with JSON that is not OpenAPI")
    return document


def _refusal(
    cluster: Cluster, replica: TarsReplica, method: str, path: str, error: ApiError
) -> Exception:
    """The line for a non-2xx answer: the proxy's own (a Status), else the replica's."""
    if error.status_object:
        # The proxy's own answer for a Service that is missing or has no ready endpoint.
        if error.status == SERVICE_UNAVAILABLE:
            return CliError(
                f"{_label(replica)} has no ready pod to answer (no ready endpoint behind its Service)"
            )
        return error
    if error.status in NO_ROUTE:
        methods = _methods_serving(openapi(cluster, replica), path)
        if not methods:
            return CliError(
                f"{_label(replica)} does not serve {path}; "
                f'"tarscli replica api {replica.name}" shows what it serves'
            )
        if method.lower() not in methods:
            listed = ", ".join(sorted(name.upper() for name in methods))
            return CliError(f"{_label(replica)} serves {path} only with {listed}, not {method}")
    return CliError(
        f"{_label(replica)} answered {error.status} {error.reason}: {_detail(error.body)}"
    )


def _methods_serving(document: dict[str, Any], path: str) -> set[str]:
    """The methods (lowercase, as OpenAPI writes them) of the paths that match `path`."""
    segments = path.split("?", 1)[0].rstrip("/").split("/")
    methods: set[str] = set()
    for template, operations in document.get("paths", {}).items():
        parts = template.rstrip("/").split("/")
        if len(parts) == len(segments) and all(
            part == segment or (part.startswith("{") and part.endswith("}") and segment)
            for part, segment in zip(parts, segments, strict=True)
        ):
            methods.update(operations)
    return methods


def _detail(body: str) -> str:
    """FastAPI's `detail`: a message, or the fields a request body got wrong."""
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        return one_line(body)[:_SHOWN_CHARACTERS] or "no message"
    if detail is None:
        return one_line(body)[:_SHOWN_CHARACTERS]
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(part) for part in problem.get('loc', []))}: {problem.get('msg', '')}"
            for problem in detail
            if isinstance(problem, dict)
        )
    return str(detail)
