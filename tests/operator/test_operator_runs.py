"""SelfCodingRun status before the workflow runs in the cluster: waiting, stopping, never inventing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tars_api.meta import ConditionStatus, find_condition
from tars_api.run import GitSource, RunPhase, RunSource, SelfCodingRun, SelfCodingRunStatus
from tars_api.vocabulary import Role
from tars_operator.runs import evaluate_run

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
