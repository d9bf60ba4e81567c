"""The API models on their own: wire names, defaults, validation, the condition helper."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError
from tars_api.meta import (
    API_VERSION,
    Condition,
    ConditionStatus,
    find_condition,
    format_time,
    set_condition,
)
from tars_api.replica import TARS_REPLICA_PLURAL, ReplicaPhase, TarsReplica, TarsReplicaSpec
from tars_api.run import (
    SELF_CODING_RUN_PLURAL,
    GitSource,
    RunPhase,
    RunSource,
    RunStatistics,
    SelfCodingRun,
    SelfCodingRunSpec,
    SelfCodingRunStatus,
    UploadSource,
    VolumeSource,
)
from tars_api.vocabulary import EngineName, Role

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def run_dict(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "SelfCodingRun",
        "metadata": {"name": "r1", "namespace": "default", "generation": 3},
        "spec": {"targets": ["src"], "source": {"upload": {"configMap": "r1-project"}}, **spec},
    }


def test_replica_reads_a_kubernetes_dict_with_camel_case_and_server_fields() -> None:
    replica = TarsReplica.model_validate(
        {
            "apiVersion": "tars.dev/v1alpha1",
            "kind": "TarsReplica",
            "metadata": {
                "name": "generator",
                "namespace": "ns",
                "uid": "u-1",
                "generation": 4,
                "creationTimestamp": "2026-01-02T03:04:05Z",
                "managedFields": [{"manager": "kubectl"}],
            },
            "spec": {"role": "generator", "replicas": 3, "nodeSelector": {"disk": "ssd"}},
            "status": {"readyReplicas": 2, "phase": "Progressing", "observedGeneration": 4},
        }
    )
    assert replica.name == "generator"
    assert replica.metadata.creation_timestamp == T0
    assert replica.spec.role is Role.generator
    assert replica.spec.node_selector == {"disk": "ssd"}
    assert replica.status is not None
    assert replica.status.ready_replicas == 2
    assert replica.status.phase is ReplicaPhase.progressing


def test_replica_manifest_is_camel_case_without_status_or_empty_metadata() -> None:
    replica = TarsReplica.build(
        "tester", Role.tester, namespace="ns", replicas=2, resources={"limits": {"cpu": 2}}
    )
    manifest = replica.to_k8s()
    assert list(manifest)[:3] == ["apiVersion", "kind", "metadata"]
    assert manifest["apiVersion"] == API_VERSION
    assert manifest["kind"] == "TarsReplica"
    assert manifest["metadata"] == {"name": "tester", "namespace": "ns"}
    assert manifest["spec"]["role"] == "tester"
    assert manifest["spec"]["replicas"] == 2
    assert manifest["spec"]["resources"] == {"limits": {"cpu": 2}, "requests": {}}
    assert "status" not in manifest
    assert TarsReplica.model_validate(manifest) == replica


def test_building_refuses_a_misspelt_field_that_parsing_would_ignore() -> None:
    with pytest.raises(TypeError, match="TarsReplicaSpec has no field replica"):
        TarsReplica.build("x", Role.tester, replica=3)
    with pytest.raises(TypeError, match="SelfCodingRunSpec has no field auto_aply"):
        SelfCodingRun.build(
            "r", ["src"], RunSource(upload=UploadSource(config_map="c")), auto_aply=True
        )
    parsed = TarsReplicaSpec.model_validate({"role": "tester", "fieldFromANewerCrd": 1})
    assert parsed == TarsReplicaSpec(role=Role.tester)


def test_snake_case_names_are_accepted_too() -> None:
    spec = TarsReplicaSpec.model_validate({"role": "analyzer", "node_selector": {"a": "b"}})
    assert spec.node_selector == {"a": "b"}
    assert spec.to_dict()["nodeSelector"] == {"a": "b"}


def test_replica_defaults_leave_engine_and_model_to_the_operator() -> None:
    spec = TarsReplicaSpec(role=Role.coordinator)
    assert (spec.replicas, spec.suspend, spec.engine, spec.model, spec.image) == (
        1,
        False,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    "spec",
    [
        {"role": "painter"},
        {"role": "analyzer", "replicas": -1},
        {"role": "analyzer", "replicas": 101},
        {"role": "analyzer", "engine": "gpt"},
        {"role": "analyzer", "resources": {"limits": {"memory": "lots"}}},
        {"role": "analyzer", "env": [{"name": "1BAD NAME", "value": "x"}]},
    ],
)
def test_bad_replica_specs_are_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TarsReplicaSpec.model_validate(spec)


def test_run_defaults() -> None:
    spec = SelfCodingRun.model_validate(run_dict()).spec
    assert spec.auto_apply is False
    assert spec.engine is EngineName.static
    assert spec.model == "llama3"
    assert spec.test_command == []
    assert (spec.max_files, spec.max_attempts_per_file, spec.deadline_seconds) == (20, 2, 3600)
    assert spec.max_tokens is None
    assert spec.stop is False
    assert spec.source.upload == UploadSource(config_map="r1-project", key="project.tar.gz")
    assert GitSource(url="https://example.org/p.git").ref == "HEAD"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"targets": []}, "at least 1 item"),
        ({"targets": ["/etc"]}, "spec.targets must be relative"),
        ({"targets": ["src/../.."]}, "spec.targets must not contain a '..' segment"),
        ({"targets": [".."]}, "spec.targets must not contain a '..' segment"),
        ({"source": {}}, "spec.source must set one of git, upload or volume"),
        (
            {"source": {"git": {"url": "https://h/r.git"}, "upload": {"configMap": "c"}}},
            "spec.source must set only one of git, upload or volume",
        ),
        ({"source": {"volume": {}}}, "exactly one of claimName or hostPath"),
        (
            {"source": {"volume": {"claimName": "c", "hostPath": "/p"}}},
            "exactly one of claimName or hostPath",
        ),
        ({"source": {"volume": {"claimName": "c", "subPath": "../x"}}}, "subPath must not contain"),
        ({"source": {"git": {"url": "--upload-pack=evil"}}}, "spec.source.git.url"),
        ({"source": {"git": {"url": "https://h/r.git", "ref": "a b"}}}, "spec.source.git.ref"),
        ({"maxFiles": -1}, "greater than or equal to 1"),
        ({"maxAttemptsPerFile": 11}, "less than or equal to 10"),
        ({"deadlineSeconds": 10}, "greater than or equal to 60"),
        ({"maxTokens": 0}, "greater than or equal to 1"),
        ({"engine": "gpt"}, "'static' or 'ollama'"),
    ],
)
def test_bad_run_specs_are_refused_with_the_field_named(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SelfCodingRun.model_validate(run_dict(**spec))


def test_relative_targets_with_dots_in_names_are_fine() -> None:
    spec = SelfCodingRun.model_validate(run_dict(targets=[".", "src/..hidden", "a/b..c/d"])).spec
    assert spec.targets == [".", "src/..hidden", "a/b..c/d"]


def test_run_build_and_round_trip() -> None:
    run = SelfCodingRun.build(
        "r2",
        ["pkg"],
        RunSource(volume=VolumeSource(claim_name="project", sub_path="repo")),
        namespace="ns",
        auto_apply=True,
        test_command=["pytest", "-q"],
    )
    manifest = run.to_k8s()
    assert manifest["spec"]["source"] == {"volume": {"claimName": "project", "subPath": "repo"}}
    assert manifest["spec"]["autoApply"] is True
    assert manifest["spec"]["testCommand"] == ["pytest", "-q"]
    assert SelfCodingRun.model_validate(manifest) == run


def test_run_status_wire_form() -> None:
    run = SelfCodingRun.model_validate(
        {
            **run_dict(),
            "status": {
                "phase": "Running",
                "stage": "Testing",
                "progress": "3/10",
                "currentFile": "src/a.py",
                "startTime": "2026-01-02T03:04:05Z",
                "statistics": {"filesTotal": 10, "improvementsApplied": 2},
                "latestResults": [{"path": "src/b.py", "outcome": "Applied", "commit": "abc1234"}],
            },
        }
    )
    assert run.status is not None
    assert run.status.phase is RunPhase.running
    assert not run.status.phase.is_terminal
    assert run.status.statistics.files_total == 10
    assert run.status.statistics.test_runs == 0
    wire = run.to_k8s(include_status=True)["status"]
    assert wire["startTime"] == "2026-01-02T03:04:05Z"
    assert wire["statistics"]["improvementsApplied"] == 2
    assert wire["latestResults"] == [
        {
            "path": "src/b.py",
            "outcome": "Applied",
            "message": "",
            "attempts": 0,
            "commit": "abc1234",
        }
    ]


def test_progress_text_comes_from_the_statistics() -> None:
    statistics = RunStatistics(files_total=10, files_processed=3)
    status = SelfCodingRunStatus(statistics=statistics, progress=statistics.progress)
    assert status.to_dict()["progress"] == "3/10"


def test_owner_reference_needs_an_object_read_from_the_server() -> None:
    replica = TarsReplica.build("gen", Role.generator)
    with pytest.raises(ValueError, match="TarsReplica gen has no uid"):
        replica.owner_reference()
    replica.metadata.uid = "0b7c"
    assert replica.owner_reference().to_dict() == {
        "apiVersion": "tars.dev/v1alpha1",
        "kind": "TarsReplica",
        "name": "gen",
        "uid": "0b7c",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_run_status_refuses_malformed_progress_and_too_many_results() -> None:
    with pytest.raises(ValidationError):
        SelfCodingRun.model_validate({**run_dict(), "status": {"progress": "three of ten"}})
    results = [{"path": f"f{i}.py", "outcome": "Skipped"} for i in range(11)]
    with pytest.raises(ValidationError):
        SelfCodingRun.model_validate({**run_dict(), "status": {"latestResults": results}})


def test_git_source_writes_its_default_ref() -> None:
    spec = SelfCodingRunSpec(targets=["src"], source=RunSource(git=GitSource(url="git@host:r.git")))
    assert spec.to_dict()["source"] == {
        "git": {"url": "git@host:r.git", "ref": "HEAD", "allowFileProtocol": False}
    }


def test_resource_names() -> None:
    assert TarsReplica.resource.kind == TarsReplica.model_fields["kind"].default
    assert SelfCodingRun.resource.kind == SelfCodingRun.model_fields["kind"].default
    assert TarsReplica.resource.plural == TARS_REPLICA_PLURAL == "tarsreplicas"
    assert SelfCodingRun.resource.plural == SELF_CODING_RUN_PLURAL == "selfcodingruns"
    assert TarsReplica.resource.crd_name == "tarsreplicas.tars.dev"
    assert SelfCodingRun.resource.list_kind == "SelfCodingRunList"


def test_time_is_rfc3339_utc_to_the_second() -> None:
    local = datetime(2026, 1, 2, 5, 4, 5, 999_999, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(local) == "2026-01-02T03:04:05Z"
    condition = Condition.make("Ready", True, "Available", at=local)
    assert condition.last_transition_time == T0
    assert condition.to_dict()["lastTransitionTime"] == "2026-01-02T03:04:05Z"


def test_condition_make_and_wire_form() -> None:
    condition = Condition.make(
        "Ready",
        False,
        "NoCoordinator",
        "no coordinator replica is ready",
        observed_generation=3,
        at=T0,
    )
    assert condition.status is ConditionStatus.false
    assert not condition.is_true
    assert condition.to_dict() == {
        "type": "Ready",
        "status": "False",
        "reason": "NoCoordinator",
        "message": "no coordinator replica is ready",
        "lastTransitionTime": "2026-01-02T03:04:05Z",
        "observedGeneration": 3,
    }


@pytest.mark.parametrize("reason", ["", "not camel", "Trailing,", "1Digit"])
def test_condition_reason_must_be_camel_case(reason: str) -> None:
    with pytest.raises(ValidationError):
        Condition.make("Ready", True, reason, at=T0)


def test_set_condition_appends_a_new_type() -> None:
    ready = Condition.make("Ready", True, "Available", at=T0)
    progressing = Condition.make("Progressing", False, "Complete", at=T0)
    assert set_condition([ready], progressing) == [ready, progressing]


def test_set_condition_keeps_transition_time_when_status_is_unchanged() -> None:
    before = [Condition.make("Ready", True, "Available", "1/1 ready", observed_generation=1, at=T0)]
    later = T0 + timedelta(minutes=5)
    merged = set_condition(
        before,
        Condition.make("Ready", True, "Available", "2/2 ready", observed_generation=2, at=later),
    )
    assert len(merged) == 1
    assert merged[0].last_transition_time == T0
    assert merged[0].message == "2/2 ready"
    assert merged[0].observed_generation == 2
    assert before[0].message == "1/1 ready"


def test_set_condition_moves_transition_time_when_status_changes() -> None:
    progressing = Condition.make("Progressing", True, "Rollout", at=T0)
    ready = Condition.make("Ready", True, "Available", at=T0)
    later = T0 + timedelta(minutes=5)
    merged = set_condition(
        [ready, progressing], Condition.make("Ready", False, "PodsNotReady", at=later)
    )
    assert [condition.type for condition in merged] == ["Ready", "Progressing"]
    assert merged[0].last_transition_time == later
    assert merged[0].status is ConditionStatus.false
    assert find_condition(merged, "Progressing") == progressing
    assert find_condition(merged, "Missing") is None
