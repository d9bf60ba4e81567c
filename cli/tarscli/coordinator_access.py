"""The coordinator replica's ServiceAccount, Role and RoleBinding, for `tarscli self-code setup`.

The rules are the chart's `tars.coordinator.rules` (without the optional git-credential
Secrets): tests/packaging/test_coordinator_access.py renders the chart and fails when
the two differ, so a namespace prepared by the CLI grants what an installed chart does.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from tars_api.names import CLI_LABELS, COORDINATOR_SERVICE_ACCOUNT

from tarscli.api_client import ApiClient, ApiError
from tarscli.kube import api_path

COORDINATOR_ACCOUNT = COORDINATOR_SERVICE_ACCOUNT
RBAC_GROUP = "rbac.authorization.k8s.io"


class PolicyRule(BaseModel):
    model_config = ConfigDict(frozen=True)

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]

    def to_k8s(self) -> dict[str, Any]:
        return {
            "apiGroups": list(self.api_groups),
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }


# What the coordinator's code calls: discovery lists and watches the worker replicas and
# their EndpointSlices; an upload source reads its ConfigMap. Run status is the operator's.
COORDINATOR_RULES = (
    PolicyRule(
        api_groups=("tars.dev",), resources=("tarsreplicas",), verbs=("get", "list", "watch")
    ),
    PolicyRule(
        api_groups=("discovery.k8s.io",),
        resources=("endpointslices",),
        verbs=("get", "list", "watch"),
    ),
    PolicyRule(api_groups=("",), resources=("configmaps",), verbs=("get",)),
)


def manifests(namespace: str) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding named `tars-coordinator` in `namespace`."""
    metadata = {"name": COORDINATOR_ACCOUNT, "namespace": namespace, "labels": CLI_LABELS}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata},
        {
            "apiVersion": f"{RBAC_GROUP}/v1",
            "kind": "Role",
            "metadata": metadata,
            "rules": [rule.to_k8s() for rule in COORDINATOR_RULES],
        },
        {
            "apiVersion": f"{RBAC_GROUP}/v1",
            "kind": "RoleBinding",
            "metadata": metadata,
            "roleRef": {
                "apiGroup": RBAC_GROUP,
                "kind": "Role",
                "name": COORDINATOR_ACCOUNT,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": COORDINATOR_ACCOUNT, "namespace": namespace}
            ],
        },
    ]


def _collection(kind: str, namespace: str) -> str:
    if kind == "ServiceAccount":
        return api_path("serviceaccounts", namespace)
    return api_path(f"{kind.lower()}s", namespace, group=RBAC_GROUP)


def ensure(api: ApiClient, namespace: str) -> list[str]:
    """Create what is absent; existing objects (a chart's, say) are left as they are.

    Returns one line per object: created or already present.
    """
    lines = []
    for manifest in manifests(namespace):
        kind = manifest["kind"]
        try:
            api.request("POST", _collection(kind, namespace), body=manifest)
            lines.append(f"{kind.lower()}/{COORDINATOR_ACCOUNT} created")
        except ApiError as error:
            if error.status != 409:
                raise
            lines.append(f"{kind.lower()}/{COORDINATOR_ACCOUNT} already exists (left unchanged)")
    return lines
