"""SelfCodingRun status before the workflow runs in the cluster: waiting, stopping, never inventing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from tars_api.meta import ConditionStatus, find_condition
from tars_api.names import RUN_LABEL
from tars_api.replica import TarsReplica
from tars_api.run import (
    GitSource,
    RunPhase,
    RunSource,
    SelfCodingRun,
    SelfCodingRunStatus,
    TestEnvironment,
)
from tars_api.vocabulary import Role
from tars_operator.replicas import InvalidReplica
from tars_operator.runs import desired_run_tester, evaluate_run, require_own_run_tester

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
ALL_READY = {role: [role.value] for role in Role}


def run(**spec: object) -> SelfCodingRun:
    built = SelfCodingRun.build(
        "r1",
        ["src"],
        RunSource(git=GitSource(url="https://example.org/p.git")),
        namespace="work",
        **spec,
    )
    built.metadata.generation = 1
    return built


def with_status(value: SelfCodingRun, patch: dict[str, object]) -> SelfCodingRun:
    return value.model_copy(update={"status": SelfCodingRunStatus.model_validate(patch)})


def test_without_a_ready_coordinator_the_run_stays_pending_and_says_why() -> None:
    update = evaluate_run(run(), {}, now=T0)
    assert update is not None
    assert update.status["phase"] == "Pending"
    status = SelfCodingRunStatus.model_validate(update.status)
    replicas_ready = find_condition(status.conditions, "ReplicasReady")
    assert replicas_ready is not None
    assert (replicas_ready.status, replicas_ready.reason) == (
        ConditionStatus.false,
        "NoReadyCoordinator",
    )
    assert replicas_ready.message.startswith(
        "no coordinator TarsReplica is ready in namespace work"
    )
    assert update.transition is not None and update.transition.reason == "NoReadyCoordinator"


def test_no_progress_is_ever_reported_before_the_workflow_runs() -> None:
    for ready in ({}, ALL_READY):
        update = evaluate_run(run(), ready, now=T0)
        assert update is not None
        assert set(update.status) == {"phase", "conditions", "observedGeneration"}


def test_re_evaluating_an_unchanged_run_writes_nothing() -> None:
    first = evaluate_run(run(), {}, now=T0)
    assert first is not None
    waiting = with_status(run(), first.status)
    assert evaluate_run(waiting, {}, now=T0 + timedelta(minutes=5)) is None


def test_a_ready_coordinator_is_acknowledged_without_claiming_the_run_started() -> None:
    first = evaluate_run(run(), {}, now=T0)
    assert first is not None
    update = evaluate_run(
        with_status(run(), first.status), ALL_READY, now=T0 + timedelta(minutes=1)
    )
    assert update is not None
    status = SelfCodingRunStatus.model_validate(update.status)
    assert status.phase is RunPhase.pending
    replicas_ready = find_condition(status.conditions, "ReplicasReady")
    progressing = find_condition(status.conditions, "Progressing")
    assert replicas_ready is not None and replicas_ready.is_true
    assert replicas_ready.last_transition_time == T0 + timedelta(minutes=1)
    assert progressing is not None and not progressing.is_true
    assert progressing.last_transition_time == T0, (
        "Progressing stayed False: its transition time stays"
    )


def test_stop_ends_a_pending_run_as_stopped_with_a_completion_time() -> None:
    update = evaluate_run(run(stop=True), {}, now=T0)
    assert update is not None
    status = SelfCodingRunStatus.model_validate(update.status)
    assert status.phase is RunPhase.stopped
    assert status.completion_time == T0
    complete = find_condition(status.conditions, "Complete")
    assert complete is not None and (complete.status, complete.reason) == (
        ConditionStatus.true,
        "Stopped",
    )
    assert update.transition is not None and update.transition.reason == "Stopped"
    stopped = with_status(run(stop=True), update.status)
    assert evaluate_run(stopped, ALL_READY, now=T0 + timedelta(minutes=1)) is None


def test_runs_that_started_or_ended_belong_to_the_workflow() -> None:
    for phase in ("Running", "Succeeded", "Failed"):
        assert evaluate_run(with_status(run(stop=True), {"phase": phase}), {}, now=T0) is None


def test_a_run_waits_for_every_worker_role_and_names_the_missing_ones() -> None:
    update = evaluate_run(run(), {Role.coordinator: ["c"], Role.analyzer: ["a"]}, now=T0)
    assert update is not None
    status = SelfCodingRunStatus.model_validate(update.status)
    replicas_ready = find_condition(status.conditions, "ReplicasReady")
    assert replicas_ready is not None and replicas_ready.reason == "NoReadyWorkers"
    assert "generator, tester" in replicas_ready.message


TEST_IMAGE = "localhost/greeter-tests:1"


def with_test_image(name: str = "r1") -> SelfCodingRun:
    built = run(test_environment=TestEnvironment(image=TEST_IMAGE))
    built.metadata.name = name
    built.metadata.uid = "0b7e1c7a-5f6d-4c1e-9a51-3f0f5d0c2b11"
    return built


def test_a_run_with_a_test_image_gets_a_tester_of_its_own_owned_and_labelled() -> None:
    manifest = desired_run_tester(with_test_image())
    assert manifest is not None
    replica = TarsReplica.model_validate(manifest)
    assert (replica.name, replica.metadata.namespace) == ("r1-tester", "work")
    assert replica.metadata.labels[RUN_LABEL] == "r1"
    assert (replica.spec.role, replica.spec.replicas, replica.spec.image) == (
        Role.tester,
        1,
        TEST_IMAGE,
    )
    (owner,) = replica.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid, owner.controller) == (
        "SelfCodingRun",
        "r1",
        "0b7e1c7a-5f6d-4c1e-9a51-3f0f5d0c2b11",
        True,
    )
    assert "status" not in manifest
    assert desired_run_tester(run()) is None


def test_a_run_whose_name_cannot_name_its_tester_is_refused_with_the_reason() -> None:
    with pytest.raises(InvalidReplica, match="spec.testEnvironment.image needs a tester"):
        desired_run_tester(with_test_image("r" * 57))
    with pytest.raises(InvalidReplica, match="cannot name a Service"):
        desired_run_tester(with_test_image("run.with.dots"))


def test_a_replica_named_like_the_runs_tester_but_not_owned_by_it_is_not_taken_over() -> None:
    owned = with_test_image()
    manifest = desired_run_tester(owned)
    require_own_run_tester(owned, None)
    require_own_run_tester(owned, manifest)
    foreign = {"metadata": {"name": "r1-tester", "ownerReferences": []}}
    with pytest.raises(InvalidReplica, match="r1-tester exists and is not this run's"):
        require_own_run_tester(owned, foreign)


def test_a_run_with_a_test_image_waits_for_its_own_tester_naming_it() -> None:
    shared_only = {role: [role.value] for role in Role if role is not Role.tester}
    update = evaluate_run(with_test_image(), shared_only, now=T0)
    assert update is not None
    status = SelfCodingRunStatus.model_validate(update.status)
    replicas_ready = find_condition(status.conditions, "ReplicasReady")
    assert replicas_ready is not None and not replicas_ready.is_true
    assert replicas_ready.reason == "NoReadyRunTester"
    assert replicas_ready.message == (
        f"the run's own tester, TarsReplica r1-tester of image {TEST_IMAGE}, "
        "is not ready in namespace work"
    )
    ready = evaluate_run(
        with_status(with_test_image(), update.status),
        {**shared_only, Role.tester: ["r1-tester"]},
        now=T0,
    )
    assert ready is not None
    acknowledged = find_condition(
        SelfCodingRunStatus.model_validate(ready.status).conditions, "ReplicasReady"
    )
    assert acknowledged is not None and acknowledged.is_true
    assert "the run's own tester r1-tester" in acknowledged.message
