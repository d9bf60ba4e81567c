"""The operator's API plumbing that needs no server: error parsing and credentials for kopf."""

from __future__ import annotations

import json

import kubernetes.client
from tars_operator.kube import TARS_REPLICAS, _api_error, connection_info


def test_status_objects_and_plain_text_errors_both_become_api_errors() -> None:
    status = {
        "kind": "Status",
        "reason": "NotFound",
        "message": 'tarsreplicas "x" not found',
        "code": 404,
    }
    error = _api_error(404, "Not Found", json.dumps(status).encode())
    assert (error.status, error.reason, error.message) == (
        404,
        "NotFound",
        'tarsreplicas "x" not found',
    )
    assert error.is_not_found and not error.is_permanent
    plain = _api_error(404, "Not Found", b"404 page not found\n")
    assert (plain.reason, plain.message) == ("Not Found", "404 page not found")
    assert _api_error(422, "Unprocessable Entity", b"{}").is_permanent


def test_bearer_tokens_and_bare_tokens_reach_kopf() -> None:
    configuration = kubernetes.client.Configuration(host="https://127.0.0.1:6443")
    configuration.api_key["BearerToken"] = "abc"
    configuration.api_key_prefix["BearerToken"] = "Bearer"
    info = connection_info(configuration)
    assert (info.server, info.scheme, info.token) == ("https://127.0.0.1:6443", "Bearer", "abc")
    bare = kubernetes.client.Configuration(host="https://h")
    bare.api_key["BearerToken"] = "xyz"
    assert (connection_info(bare).scheme, connection_info(bare).token) == (None, "xyz")


def test_resource_paths() -> None:
    assert (
        TARS_REPLICAS.path("ns", "a", "status")
        == "/apis/tars.dev/v1alpha1/namespaces/ns/tarsreplicas/a/status"
    )
