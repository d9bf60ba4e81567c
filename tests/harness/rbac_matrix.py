"""The RBAC matrix of the chart's service accounts: what each may do, and what it must never.

Asked from outside with `kubectl auth can-i --as` (tests/packaging/test_rbac.py) and from
inside the operator's pod with its own token (tests/e2e/test_kind_demo.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

GIT_SECRET = "git-credentials"
# The release's own namespace, another namespace, or all of them.
Where = Literal["home", "other", "cluster"]


@dataclass(frozen=True)
class Check:
    """One `kubectl auth can-i`: VERB RESOURCE[/NAME] [--subresource] in a namespace or cluster-wide."""

    verb: str
    resource: str
    subresource: str | None = None
    where: Where = "home"

    def __str__(self) -> str:
        sub = f"/{self.subresource}" if self.subresource else ""
        return f"{self.verb} {self.resource}{sub} ({self.where})"

    def resource_attributes(self, home: str, other: str) -> dict[str, str]:
        """The check as a SubjectAccessReview's resourceAttributes, as `kubectl auth can-i` sends it."""
        resource, _, name = self.resource.partition("/")
        plural, _, group = resource.partition(".")
        attributes = {"verb": self.verb, "resource": plural, "group": group}
        if name:
            attributes["name"] = name
        if self.subresource:
            attributes["subresource"] = self.subresource
        if self.where != "cluster":
            attributes["namespace"] = home if self.where == "home" else other
        return attributes


TR, SCR = "tarsreplicas.tars.dev", "selfcodingruns.tars.dev"
CRDS = "customresourcedefinitions.apiextensions.k8s.io"

OPERATOR_CAN = [
    *(
        Check(verb, resource)
        for verb in ("get", "list", "watch", "patch")
        for resource in (TR, SCR)
    ),
    *(Check("patch", resource, "status") for resource in (TR, SCR)),
    Check("update", TR, "finalizers"),
    # A run with a test image gets a tester TarsReplica of its own, deleted when it ends.
    Check("create", TR),
    Check("delete", TR),
    Check("update", SCR, "finalizers"),
    *(Check(verb, "deployments.apps") for verb in ("get", "list", "watch", "create", "patch")),
    *(Check(verb, "services") for verb in ("get", "list", "watch", "create", "patch")),
    *(Check(verb, "configmaps") for verb in ("get", "create", "patch")),
    Check("create", "events"),
    Check("create", "events.events.k8s.io"),
    # Coordinator pod addresses: the operator hands runs to a pod, not to the Service name.
    Check("list", "endpointslices.discovery.k8s.io"),
    Check("list", CRDS, where="cluster"),
    Check("watch", CRDS, where="cluster"),
    Check("list", "namespaces", where="cluster"),
]
NEVER = [
    Check("get", "secrets"),
    Check("list", "secrets"),
    Check("get", "secrets", where="other"),
    Check("list", "secrets", where="cluster"),
    Check("delete", CRDS, where="cluster"),
    Check("create", CRDS, where="cluster"),
    Check("patch", CRDS, where="cluster"),
    Check("create", "pods"),
    Check("create", "pods", "exec"),
    Check("create", "pods", "attach"),
    Check("create", "pods", "portforward"),
    Check("delete", "namespaces", where="cluster"),
    Check("create", "rolebindings.rbac.authorization.k8s.io"),
    Check("create", "clusterrolebindings.rbac.authorization.k8s.io", where="cluster"),
    Check("escalate", "roles.rbac.authorization.k8s.io"),
    Check("impersonate", "serviceaccounts"),
    Check("create", "serviceaccounts", "token"),
]
OPERATOR_CANNOT = [
    *NEVER,
    Check("delete", SCR),
    Check("delete", "deployments.apps"),
    Check("delete", "services"),
    Check("delete", "configmaps"),
    Check("list", "configmaps"),
    Check("update", "nodes", where="cluster"),
]
OPERATOR_CONFINED = [
    Check("list", TR, where="other"),
    Check("patch", SCR, "status", where="other"),
    Check("create", "deployments.apps", where="other"),
    Check("get", "configmaps", where="other"),
]
COORDINATOR_CAN = [
    *(Check(verb, TR) for verb in ("get", "list", "watch")),
    *(Check(verb, "endpointslices.discovery.k8s.io") for verb in ("get", "list", "watch")),
    Check("get", "configmaps"),
]
COORDINATOR_CANNOT = [
    *NEVER,
    Check("patch", TR),
    Check("patch", TR, "status"),
    Check("get", SCR),
    Check("patch", SCR),
    Check("patch", SCR, "status"),
    Check("delete", SCR),
    Check("create", SCR),
    Check("list", "configmaps"),
    Check("create", "configmaps"),
    Check("create", "events"),
    Check("create", "deployments.apps"),
    Check("list", TR, where="other"),
    Check("get", "configmaps", where="other"),
    Check("list", CRDS, where="cluster"),
]
WORKER_CANNOT = [
    *NEVER,
    Check("get", TR),
    Check("list", SCR),
    Check("get", "configmaps"),
    Check("list", "endpointslices.discovery.k8s.io"),
    Check("create", "events"),
]


def mismatches(
    answer: Callable[[Check], bool], allowed: list[Check], denied: list[Check]
) -> list[str]:
    """Each allowed check the answer refuses, each denied one it grants."""
    wrong = [f"cannot {check}" for check in allowed if not answer(check)]
    return wrong + [f"CAN {check}" for check in denied if answer(check)]
