"""The coordinator's rights are written once for the chart and once for `tarscli self-code setup`:
these tests keep the two the same, and check what the CLI creates against the real API server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tarscli.coordinator_access import COORDINATOR_ACCOUNT, COORDINATOR_RULES

from tests.harness.chart import Render, find

TARSCLI = Path(sys.executable).parent / "tarscli"


def _normalised(rules: list[dict[str, Any]]) -> list[tuple[tuple[str, ...], ...]]:
    return sorted(
        (
            tuple(rule.get("apiGroups", [])),
            tuple(rule.get("resources", [])),
            tuple(rule.get("verbs", [])),
        )
        for rule in rules
        if "resourceNames" not in rule
    )


def test_cli_grants_the_coordinator_what_the_chart_grants(render: Render) -> None:
    roles = [
        role
        for role in find(render(), "Role")
        if any(
            subject.get("name", "").endswith("coordinator")
            for binding in find(render(), "RoleBinding")
            if binding["roleRef"]["name"] == role["metadata"]["name"]
            for subject in binding.get("subjects", [])
        )
    ]
    assert len(roles) == 1, [role["metadata"]["name"] for role in find(render(), "Role")]
    chart_rules = _normalised(roles[0]["rules"])
    assert chart_rules == _normalised([rule.to_k8s() for rule in COORDINATOR_RULES])


def test_setup_creates_the_coordinator_account_once(
    kubeconfig: Path, namespace: str, tars_crds: list[str], kubectl: Callable[..., Any]
) -> None:
    command = [
        str(TARSCLI),
        "self-code",
        "setup",
        "--no-wait",
        "--kubeconfig",
        str(kubeconfig),
        "-n",
        namespace,
    ]
    first = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    assert f"role/{COORDINATOR_ACCOUNT} created" in first.stdout
    second = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    assert f"rolebinding/{COORDINATOR_ACCOUNT} already exists" in second.stdout
    allowed = kubectl(
        "auth",
        "can-i",
        "watch",
        "tarsreplicas.tars.dev",
        "-n",
        namespace,
        f"--as=system:serviceaccount:{namespace}:{COORDINATOR_ACCOUNT}",
        check=False,
    )
    assert allowed.stdout.strip() == "yes"
    denied = kubectl(
        "auth",
        "can-i",
        "get",
        "secrets",
        "-n",
        namespace,
        f"--as=system:serviceaccount:{namespace}:{COORDINATOR_ACCOUNT}",
        check=False,
    )
    assert denied.stdout.strip() == "no"
