"""The generated CRDs: in step with the models, structural, and enforced by the real API server."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
import yaml
from pydantic import Field, ValidationError
from tars_api.crdgen import crd_manifests, render, write_crds
from tars_api.meta import API_VERSION, ApiModel
from tars_api.replica import TarsReplica
from tars_api.run import SelfCodingRun
from tars_api.schema import SchemaError, structural_schema

# The `kubectl` fixture of tests/conftest.py (not imported: several conftest modules exist).
Kubectl = Callable[..., subprocess.CompletedProcess[str]]
REPOSITORY = Path(__file__).resolve().parent.parent
CRD_DIRECTORY = REPOSITORY / "crds"
EXAMPLES = REPOSITORY / "examples"
KINDS: dict[str, type[TarsReplica | SelfCodingRun]] = {
    "TarsReplica": TarsReplica,
    "SelfCodingRun": SelfCodingRun,
}
# Keywords a structural schema may carry (apiextensions.k8s.io/v1 JSONSchemaProps in use here).
ALLOWED_KEYWORDS = {
    "type", "description", "properties", "required", "items", "additionalProperties",
    "enum", "default", "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems",
    "maxProperties", "pattern", "format", "anyOf", "x-kubernetes-validations", "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
}  # fmt: skip


# --- generation ---------------------------------------------------------------------------


def test_committed_crds_match_the_models(tmp_path: Path) -> None:
    generated = {path.name: path.read_text() for path in write_crds(tmp_path)}
    committed = {path.name: path.read_text() for path in CRD_DIRECTORY.glob("*.yaml")}
    assert set(committed) == set(generated), (
        f"crds/ holds {sorted(committed)}, the models generate {sorted(generated)}: run make crds"
    )
    stale = sorted(name for name in generated if committed[name] != generated[name])
    assert not stale, f"{', '.join(stale)} differ from what the models generate: run make crds"


def test_generation_is_deterministic_and_matches_the_runtime_manifests() -> None:
    manifests = crd_manifests()
    assert [render(manifest) for manifest in manifests] == [
        render(manifest) for manifest in crd_manifests()
    ]
    for manifest in manifests:
        text = render(manifest)
        assert text.startswith("# Generated")
        assert "make crds" in text.splitlines()[1]
        assert yaml.safe_load(text) == manifest


def schema_nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from schema_nodes(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_nodes(node["additionalProperties"], f"{path}[*]")
    if "items" in node:
        yield from schema_nodes(node["items"], f"{path}[]")


def openapi_schema(manifest: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = manifest["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("manifest", crd_manifests(), ids=lambda m: m["metadata"]["name"])
def test_schemas_are_structural(manifest: dict[str, Any]) -> None:
    for path, node in schema_nodes(openapi_schema(manifest)):
        assert set(node) <= ALLOWED_KEYWORDS, f"{path}: {set(node) - ALLOWED_KEYWORDS}"
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert "anyOf" not in node, path
        assert node.get("type") in {"object", "array", "string", "integer", "boolean"}, path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("additionalProperties") is not True, path
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"].get("required", [])), path
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["message"].startswith("spec."), f"{path}: {rule} does not name its field"


def test_crd_metadata() -> None:
    replica, run = crd_manifests()
    assert replica["metadata"]["name"] == "tarsreplicas.tars.dev"
    assert run["metadata"]["name"] == "selfcodingruns.tars.dev"
    for manifest, short_name in ((replica, "tr"), (run, "scr")):
        spec = manifest["spec"]
        assert (spec["group"], spec["scope"]) == ("tars.dev", "Namespaced")
        assert spec["names"]["shortNames"] == [short_name]
        assert spec["names"]["categories"] == ["tars"]
        (version,) = spec["versions"]
        assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
        assert "status" in version["subresources"]
        conditions = openapi_schema(manifest)["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        condition = conditions["items"]
        assert set(condition["required"]) == {"type", "status", "reason", "lastTransitionTime"}
        assert condition["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
        assert condition["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert replica["spec"]["versions"][0]["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert "scale" not in run["spec"]["versions"][0]["subresources"]
    resources = openapi_schema(replica)["properties"]["spec"]["properties"]["resources"]
    assert resources["properties"]["limits"]["additionalProperties"]["x-kubernetes-int-or-string"]
    affinity = openapi_schema(replica)["properties"]["spec"]["properties"]["affinity"]
    assert affinity == {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "description": "A core/v1 Affinity, passed to the pods as written",
    }


class Inner(ApiModel):
    """An inner object."""

    size: Annotated[int, Field(gt=0)] = 1


class Outer(ApiModel):
    inner: Inner | None = Field(default=None, description="The inner one")
    quantity: int | str = 0


def test_conversion_inlines_optional_models_and_marks_int_or_string() -> None:
    schema = structural_schema(Outer)
    assert schema == {
        "properties": {
            "inner": {
                "description": "The inner one",
                "properties": {
                    "size": {
                        "default": 1,
                        "exclusiveMinimum": True,
                        "minimum": 0,
                        "type": "integer",
                    }
                },
                "type": "object",
            },
            "quantity": {
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                "default": 0,
                "x-kubernetes-int-or-string": True,
            },
        },
        "type": "object",
    }


class FreeForm(ApiModel):
    anything: dict[str, Any]


class Ambiguous(ApiModel):
    flag: bool | str


@pytest.mark.parametrize(
    ("model", "problem"),
    [(FreeForm, "PreserveUnknownFields"), (Ambiguous, "not structural")],
)
def test_conversion_refuses_what_a_structural_schema_cannot_say(
    model: type[ApiModel], problem: str
) -> None:
    with pytest.raises(SchemaError, match=problem):
        structural_schema(model)


# --- against the real API server ---------------------------------------------------------


def apply_json(kubectl: Kubectl, namespace: str, manifest: dict[str, Any], *verb: str) -> Any:
    return kubectl(*(verb or ("create",)), "-n", namespace, "-f", "-", input=json.dumps(manifest),
                   check=False)  # fmt: skip


def get_json(kubectl: Kubectl, namespace: str, *what: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(kubectl("get", "-n", namespace, *what, "-o", "json").stdout)
    return result


def replica_manifest(name: str = "gen", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "TarsReplica",
        "metadata": {"name": name},
        "spec": {"role": "generator", **spec},
    }


def run_manifest(name: str = "run", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "SelfCodingRun",
        "metadata": {"name": name},
        "spec": {
            "targets": ["src"],
            "source": {"git": {"url": "https://example.org/p.git"}},
            **spec,
        },
    }


def test_server_fills_in_the_defaults(
    tars_crds: list[str], kubectl: Kubectl, namespace: str
) -> None:
    minimal_run = run_manifest("minimal", source={"upload": {"configMap": "minimal-project"}})
    for manifest in (replica_manifest("minimal"), minimal_run, run_manifest("git")):
        kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest))

    replica = get_json(kubectl, namespace, "tarsreplica", "minimal")
    assert replica["spec"] == {"role": "generator", "replicas": 1, "suspend": False}
    assert TarsReplica.model_validate(replica).spec.replicas == 1

    run = get_json(kubectl, namespace, "selfcodingrun", "minimal")["spec"]
    assert run == {
        "targets": ["src"],
        "source": {"upload": {"configMap": "minimal-project", "key": "project.tar.gz"}},
        "autoApply": False,
        "engine": "static",
        "model": "llama3",
        "maxFiles": 20,
        "maxAttemptsPerFile": 2,
        "deadlineSeconds": 3600,
        "sandbox": "auto",
        "testNetwork": False,
        "learning": True,
        "stop": False,
    }
    git = get_json(kubectl, namespace, "scr", "git")
    assert git["spec"]["source"]["git"] == {
        "url": "https://example.org/p.git",
        "ref": "HEAD",
        "allowFileProtocol": False,
    }
    assert SelfCodingRun.model_validate(git).spec.source.git is not None


def test_scale_subresource(tars_crds: list[str], kubectl: Kubectl, namespace: str) -> None:
    kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(replica_manifest("x")))
    kubectl("scale", "-n", namespace, "tr/x", "--replicas=3")
    assert get_json(kubectl, namespace, "tr", "x")["spec"]["replicas"] == 3

    status = {"status": {"replicas": 2, "readyReplicas": 1, "selector": "tars.dev/replica=x"}}
    kubectl("patch", "-n", namespace, "tr/x", "--subresource=status", "--type=merge",
            "-p", json.dumps(status))  # fmt: skip
    scale = get_json(kubectl, namespace, "tr", "x", "--subresource=scale")
    assert scale["kind"] == "Scale"
    assert scale["spec"] == {"replicas": 3}
    assert scale["status"] == {"replicas": 2, "selector": "tars.dev/replica=x"}

    refused = kubectl("scale", "-n", namespace, "tr/x", "--replicas=101", check=False)
    assert refused.returncode != 0
    assert "spec.replicas" in refused.stderr


def test_status_is_a_subresource_with_metav1_conditions(
    tars_crds: list[str], kubectl: Kubectl, namespace: str
) -> None:
    kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(run_manifest("r")))
    ignored = {"status": {"phase": "Running"}}
    kubectl("patch", "-n", namespace, "scr/r", "--type=merge", "-p", json.dumps(ignored))
    assert "status" not in get_json(kubectl, namespace, "scr", "r")

    condition = {
        "type": "ReplicasReady",
        "status": "False",
        "reason": "NoCoordinator",
        "message": "no coordinator replica is ready",
        "lastTransitionTime": "2026-01-02T03:04:05Z",
        "observedGeneration": 1,
    }
    status = {"status": {"phase": "Pending", "conditions": [condition], "observedGeneration": 1}}
    kubectl("patch", "-n", namespace, "scr/r", "--subresource=status", "--type=merge",
            "-p", json.dumps(status))  # fmt: skip
    stored = SelfCodingRun.model_validate(get_json(kubectl, namespace, "scr", "r"))
    assert stored.status is not None
    assert stored.status.conditions[0].reason == "NoCoordinator"
    assert stored.status.statistics.files_total == 0

    for field, value in (("reason", "not camel case"), ("status", "Maybe")):
        bad = {"status": {"conditions": [{**condition, field: value}]}}
        refused = kubectl("patch", "-n", namespace, "scr/r", "--subresource=status",
                          "--type=merge", "-p", json.dumps(bad), check=False)  # fmt: skip
        assert refused.returncode != 0
        assert f"status.conditions[0].{field}" in refused.stderr


def without(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(manifest: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = manifest
        for parent in parents:
            node = node[parent]
        del node[leaf]

    return edit


# (manifest, the field the error must name, a fragment of the message)
BAD_SPECS: dict[str, tuple[dict[str, Any], str, str]] = {
    "unknown role": (replica_manifest(role="painter"), "spec.role", "Unsupported value"),
    "negative replicas": (
        replica_manifest(replicas=-1),
        "spec.replicas",
        "greater than or equal to 0",
    ),
    "too many replicas": (
        replica_manifest(replicas=101),
        "spec.replicas",
        "less than or equal to 100",
    ),
    "unknown replica engine": (replica_manifest(engine="gpt"), "spec.engine", "Unsupported value"),
    "malformed quantity": (
        replica_manifest(resources={"limits": {"memory": "lots"}}),
        "spec.resources.limits.memory",
        "should match",
    ),
    "negative quantity": (
        replica_manifest(resources={"requests": {"cpu": "-1"}}),
        "spec.resources.requests.cpu",
        "should match",
    ),
    "negative integer quantity": (
        replica_manifest(resources={"requests": {"cpu": -1}}),
        "spec.resources.requests.cpu",
        "greater than or equal to 0",
    ),
    "duplicate env names": (
        replica_manifest(env=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]),
        "spec.env[1]",
        "Duplicate value",
    ),
    "toleration value with Exists": (
        replica_manifest(tolerations=[{"key": "k", "operator": "Exists", "value": "v"}]),
        "spec.tolerations[0].value",
        "must be empty when operator is Exists",
    ),
    "two sources": (
        run_manifest(source={"git": {"url": "https://h/r.git"}, "upload": {"configMap": "c"}}),
        "spec.source",
        "must set only one of git, upload or volume",
    ),
    "empty source": (
        run_manifest(source={}),
        "spec.source",
        "must set one of git, upload or volume",
    ),
    "no source": (
        {**run_manifest(), "spec": {"targets": ["src"]}},
        "spec.source",
        "Required value",
    ),
    "no targets": (run_manifest(targets=[]), "spec.targets", "at least 1 items"),
    "absolute target": (
        run_manifest(targets=["src", "/etc"]),
        "spec.targets[1]",
        "must be relative",
    ),
    "target with ..": (run_manifest(targets=["src/../../etc"]), "spec.targets[0]", "'..' segment"),
    "target that is ..": (run_manifest(targets=[".."]), "spec.targets[0]", "'..' segment"),
    "duplicate targets": (
        run_manifest(targets=["src", "src"]),
        "spec.targets[1]",
        "Duplicate value",
    ),
    "negative maxFiles": (run_manifest(maxFiles=-1), "spec.maxFiles", "greater than or equal to 1"),
    "zero attempts": (
        run_manifest(maxAttemptsPerFile=0),
        "spec.maxAttemptsPerFile",
        "greater than or equal to 1",
    ),
    "deadline too long": (
        run_manifest(deadlineSeconds=86401),
        "spec.deadlineSeconds",
        "less than or equal to 86400",
    ),
    "negative maxTokens": (
        run_manifest(maxTokens=-5),
        "spec.maxTokens",
        "greater than or equal to 1",
    ),
    "unknown engine": (run_manifest(engine="gpt"), "spec.engine", "Unsupported value"),
    "empty test command word": (
        run_manifest(testCommand=["", "-q"]),
        "spec.testCommand[0]",
        "at least 1 chars long",
    ),
    "volume with claim and host path": (
        run_manifest(source={"volume": {"claimName": "c", "hostPath": "/srv/p"}}),
        "spec.source.volume",
        "exactly one of claimName or hostPath",
    ),
    "volume with neither": (
        run_manifest(source={"volume": {"subPath": "p"}}),
        "spec.source.volume",
        "exactly one of claimName or hostPath",
    ),
    "relative host path": (
        run_manifest(source={"volume": {"hostPath": "srv/p"}}),
        "spec.source.volume.hostPath",
        "must be an absolute path",
    ),
    "sub path escaping the volume": (
        run_manifest(source={"volume": {"claimName": "c", "subPath": "a/../.."}}),
        "spec.source.volume.subPath",
        "'..' segment",
    ),
    "git url that is an option": (
        run_manifest(source={"git": {"url": "--upload-pack=touch /tmp/x"}}),
        "spec.source.git.url",
        "leading '-'",
    ),
    "git without url": (
        run_manifest(source={"git": {"ref": "main"}}),
        "spec.source.git.url",
        "Required value",
    ),
    "test image with extras": (
        run_manifest(testEnvironment={"image": "localhost/p-tests:1", "extras": ["test"]}),
        "spec.testEnvironment.image",
        "excludes extras and setupCommand",
    ),
    "test image with a setup command": (
        run_manifest(testEnvironment={"image": "localhost/p-tests:1", "setupCommand": ["pip"]}),
        "spec.testEnvironment.image",
        "excludes extras and setupCommand",
    ),
    "malformed test image": (
        run_manifest(testEnvironment={"image": "p tests:1"}),
        "spec.testEnvironment.image",
        "should match",
    ),
    "upload into a badly named ConfigMap": (
        run_manifest(source={"upload": {"configMap": "Not_A_Name"}}),
        "spec.source.upload.configMap",
        "should match",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_specs_are_refused_naming_the_field(
    case: str, tars_crds: list[str], kubectl: Kubectl, namespace: str
) -> None:
    manifest, field, fragment = BAD_SPECS[case]
    refused = apply_json(kubectl, namespace, manifest, "create", "--dry-run=server")
    assert refused.returncode != 0, f"{case}: the API server accepted it"
    assert f"{field}:" in refused.stderr, refused.stderr
    assert fragment in refused.stderr, refused.stderr
    # The models refuse what the API server refuses, so clients learn it before a round trip.
    with pytest.raises(ValidationError):
        KINDS[manifest["kind"]].model_validate(manifest)


# (object, merge patch, field the error names, fragment); applied to an existing object.
BAD_CHANGES: dict[str, tuple[dict[str, Any], dict[str, Any], str, str]] = {
    "targets": (run_manifest(), {"targets": ["other"]}, "spec.targets", "immutable"),
    "source": (
        run_manifest(),
        {"source": {"git": {"url": "https://example.org/q.git"}}},
        "spec.source",
        "immutable",
    ),
    "autoApply": (run_manifest(), {"autoApply": True}, "spec.autoApply", "immutable"),
    "engine": (run_manifest(), {"engine": "ollama"}, "spec.engine", "immutable"),
    "learning": (run_manifest(), {"learning": False}, "spec.learning", "immutable"),
    "stop unset": (run_manifest(stop=True), {"stop": False}, "spec.stop", "cannot be unset"),
    "role": (replica_manifest(), {"role": "tester"}, "spec.role", "immutable"),
}


@pytest.mark.parametrize("case", list(BAD_CHANGES))
def test_bad_changes_are_refused(
    case: str, tars_crds: list[str], kubectl: Kubectl, namespace: str
) -> None:
    manifest, patch, field, fragment = BAD_CHANGES[case]
    kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    target = f"{manifest['kind'].lower()}/{manifest['metadata']['name']}"
    refused = kubectl("patch", "-n", namespace, target, "--type=merge",
                      "-p", json.dumps({"spec": patch}), check=False)  # fmt: skip
    assert refused.returncode != 0, f"{case}: the API server accepted the change"
    assert f"{field}:" in refused.stderr, refused.stderr
    assert fragment in refused.stderr, refused.stderr


def test_budgets_and_stop_may_change(
    tars_crds: list[str], kubectl: Kubectl, namespace: str
) -> None:
    kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(run_manifest("r")))
    patch = {"spec": {"stop": True, "maxFiles": 50, "deadlineSeconds": 7200}}
    kubectl("patch", "-n", namespace, "scr/r", "--type=merge", "-p", json.dumps(patch))
    spec = SelfCodingRun.model_validate(get_json(kubectl, namespace, "scr", "r")).spec
    assert (spec.stop, spec.max_files, spec.deadline_seconds) == (True, 50, 7200)


def test_examples_are_accepted(tars_crds: list[str], kubectl: Kubectl, namespace: str) -> None:
    files = sorted((EXAMPLES / "replicas").glob("*.yaml")) + sorted(
        (EXAMPLES / "runs").glob("*.yaml")
    )
    roles = set()
    for file in files:
        manifest = yaml.safe_load(file.read_text())
        KINDS[manifest["kind"]].model_validate(manifest)
        if manifest["kind"] == "TarsReplica":
            roles.add(manifest["spec"]["role"])
    assert roles == {"analyzer", "generator", "tester", "coordinator"}
    arguments = [argument for file in files for argument in ("-f", str(file))]
    created = kubectl("create", "-n", namespace, "-o", "name", *arguments).stdout.split()
    assert len(created) == len(files)
    listed = kubectl("get", "-n", namespace, "tars", "-o", "name").stdout.split()
    assert sorted(listed) == sorted(created)


def test_printer_columns(tars_crds: list[str], kubectl: Kubectl, namespace: str) -> None:
    kubectl(
        "create", "-n", namespace, "-f", "-", input=json.dumps(replica_manifest("gen", replicas=2))
    )
    kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(run_manifest("r")))
    replica_status = {
        "status": {
            "phase": "Progressing",
            "replicas": 2,
            "readyReplicas": 1,
            "endpoint": "http://gen.ns.svc:8080",
        }
    }
    run_status = {
        "status": {
            "phase": "Running",
            "stage": "Testing",
            "progress": "3/10",
            "currentFile": "src/app.py",
            "statistics": {"improvementsApplied": 2},
        }
    }
    for target, status in (("tr/gen", replica_status), ("scr/r", run_status)):
        kubectl("patch", "-n", namespace, target, "--subresource=status", "--type=merge",
                "-p", json.dumps(status))  # fmt: skip

    table = kubectl("get", "-n", namespace, "tr,scr").stdout
    assert rows(table, "tarsreplica.tars.dev/gen") == [
        ["NAME", "ROLE", "DESIRED", "READY", "PHASE", "AGE"],
        ["tarsreplica.tars.dev/gen", "generator", "2", "1", "Progressing"],
    ]
    assert rows(table, "selfcodingrun.tars.dev/r") == [
        ["NAME", "PHASE", "STAGE", "PROGRESS", "APPLIED", "AGE"],
        ["selfcodingrun.tars.dev/r", "Running", "Testing", "3/10", "2"],
    ]
    wide = kubectl("get", "-n", namespace, "tr,scr", "-o", "wide").stdout
    assert rows(wide, "tarsreplica.tars.dev/gen")[0][-2:] == ["ENDPOINT", "AGE"]
    assert rows(wide, "tarsreplica.tars.dev/gen")[1][5] == "http://gen.ns.svc:8080"
    assert rows(wide, "selfcodingrun.tars.dev/r")[0][-2:] == ["CURRENT", "AGE"]
    assert rows(wide, "selfcodingrun.tars.dev/r")[1][5] == "src/app.py"


def rows(table: str, name: str) -> list[list[str]]:
    """The header and the row of `name` in kubectl's table (one block per kind), age dropped."""
    blocks = [block.splitlines() for block in table.strip().split("\n\n")]
    for header, *lines in blocks:
        for line in lines:
            if line.split()[0] == name:
                return [header.split(), line.split()[: len(header.split()) - 1]]
    raise AssertionError(f"{name} not in\n{table}")
