"""The Tiltfile and the kind config, read as text (Tilt and kind need Docker, absent here).

Starlark is Python's syntax, so the Tiltfile is parsed with `ast` and its calls are
checked against the files and names they refer to: the Dockerfile and its stages, the
chart and its values, the CRD kinds, the operator's metrics port.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml
from tars_api.replica import TarsReplica
from tars_api.run import SelfCodingRun
from tars_operator.main import build_parser

from tests.harness.dockerfiles import stages

REPOSITORY = Path(__file__).resolve().parents[2]
TILTFILE = REPOSITORY / "Tiltfile"
KIND_CONFIG = REPOSITORY / "examples" / "kind" / "cluster.yaml"
CHART = REPOSITORY / "charts" / "tars"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


class Call:
    def __init__(self, node: ast.Call) -> None:
        self.node = node
        self.args = [_literal(argument) for argument in node.args]
        self.kwargs = {
            keyword.arg: _literal(keyword.value) for keyword in node.keywords if keyword.arg
        }
        self.kwarg_nodes = {keyword.arg: keyword.value for keyword in node.keywords if keyword.arg}


@pytest.fixture(scope="module")
def tiltfile() -> ast.Module:
    return ast.parse(TILTFILE.read_text(encoding="utf-8"), filename=str(TILTFILE))


def calls(tree: ast.AST, name: str) -> list[Call]:
    return [
        Call(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name
    ]


def test_builds_both_images_from_the_dockerfile_stages(tiltfile: ast.Module) -> None:
    builds = calls(tiltfile, "docker_build")
    references = {call.args[0]: call for call in builds}
    assert set(references) == {VALUES["image"]["repository"], VALUES["replicaImage"]["repository"]}
    stage_names = {stage.name for stage in stages(REPOSITORY / "replica-images" / "Dockerfile")}
    dockerfile_names = {
        node.targets[0].id: _literal(node.value)
        for node in ast.walk(tiltfile)
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    for call in builds:
        context = REPOSITORY / call.args[1]
        assert context.is_dir()
        dockerfile_node = call.kwarg_nodes["dockerfile"]
        dockerfile = call.kwargs["dockerfile"] or dockerfile_names.get(
            getattr(dockerfile_node, "id", ""), None
        )
        assert dockerfile and (REPOSITORY / dockerfile).is_file(), f"{dockerfile} does not exist"
        assert call.kwargs["target"] in stage_names
    assert references[VALUES["image"]["repository"]].kwargs["target"] == "operator"
    assert references[VALUES["replicaImage"]["repository"]].kwargs["target"] == "replica"


def test_deploys_the_chart_with_helm_and_values_it_knows(tiltfile: ast.Module) -> None:
    (helm,) = calls(tiltfile, "helm")
    assert (REPOSITORY / helm.args[0] / "Chart.yaml").is_file()
    assert calls(tiltfile, "k8s_yaml"), "helm() output must be passed to k8s_yaml"
    for setting in helm.kwargs["set"]:
        path, _, _ = setting.partition("=")
        node: Any = VALUES
        for key in path.split("."):
            assert isinstance(node, dict) and key in node, f"--set {path}: not a chart value"
            node = node[key]


def test_restricted_to_kind_contexts(tiltfile: ast.Module) -> None:
    assert calls(tiltfile, "allow_k8s_contexts")
    assert calls(tiltfile, "k8s_context")
    guards = [
        node
        for node in ast.walk(tiltfile)
        if isinstance(node, ast.If)
        and "startswith('kind-')" in ast.unparse(node.test).replace('"', "'")
        and isinstance(node.test, ast.UnaryOp)
        and any(calls(statement, "fail") for statement in node.body)
    ]
    assert guards, "the Tiltfile must fail() on contexts not starting with kind-"
    # The guard comes before anything is deployed.
    first_deploy = min(call.node.lineno for call in calls(tiltfile, "k8s_yaml"))
    assert guards[0].lineno < first_deploy


def test_groups_the_custom_resources(tiltfile: ast.Module) -> None:
    kinds = {call.args[0]: call for call in calls(tiltfile, "k8s_kind")}
    assert set(kinds) == {TarsReplica.resource.kind, SelfCodingRun.resource.kind}
    # Tilt swaps the replica image into TarsReplica.spec.image: the field the CRD has.
    assert kinds["TarsReplica"].kwargs["image_json_path"] == "{.spec.image}"
    assert "image" in TarsReplica.model_fields["spec"].annotation.model_fields


def test_forwards_the_operators_metrics_port(tiltfile: ast.Module) -> None:
    forwards = calls(tiltfile, "port_forward")
    assert forwards
    metrics_port = VALUES["operator"]["metricsPort"]
    assert build_parser().get_default("metrics_port") == metrics_port
    assert any(call.args[1] == metrics_port for call in forwards)
    resources = [call.args[0] for call in calls(tiltfile, "k8s_resource")]
    # `helm template` names the operator Deployment <release>-operator; the release is `tars`.
    assert "tars-operator" in resources


def test_kind_config_mounts_the_sample_project_where_the_volume_run_expects_it() -> None:
    config = yaml.safe_load(KIND_CONFIG.read_text(encoding="utf-8"))
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    mounts = [mount for node in config["nodes"] for mount in node.get("extraMounts", [])]
    assert len(mounts) == 1
    (mount,) = mounts
    # kind resolves relative host paths against the directory it runs in: the repository root.
    host = REPOSITORY / mount["hostPath"]
    assert (host / "pyproject.toml").is_file() and (host / "tests").is_dir()
    assert host.resolve() == (REPOSITORY / "examples" / "sample-project").resolve()
    assert not mount.get("readOnly", False), "auto-apply commits in place"
    run = yaml.safe_load((REPOSITORY / "examples" / "runs" / "volume-run.yaml").read_text())
    assert run["spec"]["source"]["volume"]["hostPath"] == mount["containerPath"]
