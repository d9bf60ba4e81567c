"""Credentials on disk for the local cluster's clients: the kubeconfig document that the
control plane writes for its admin and its controllers and tests for users of their own, and
the owner-only atomic write that puts kubeconfigs, tokens and the control plane's state in
place."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

JsonDict = dict[str, Any]


def kubeconfig_document(
    cluster: JsonDict,
    user: str,
    credentials: JsonDict,
    *,
    cluster_name: str,
    context_name: str,
    namespace: str | None = None,
) -> JsonDict:
    """A kubeconfig with one cluster (`server` and how to trust it), one user and one context."""
    context: JsonDict = {"cluster": cluster_name, "user": user}
    if namespace is not None:
        context["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster_name, "cluster": cluster}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": context_name, "context": context}],
        "current-context": context_name,
    }


def write_kubeconfig(path: Path, document: JsonDict) -> None:
    # JSON is valid YAML, and kubeconfig files hold credentials: owner-only.
    write_private(path, json.dumps(document, indent=2) + "\n")


def write_private(path: Path, text: str) -> None:
    """Replace PATH with TEXT at once, readable by the owner only (mkstemp's mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(descriptor, "w") as stream:
        stream.write(text)
    os.replace(temporary, path)
