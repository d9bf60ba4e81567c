"""SelfCodingRun status before the workflow runs in the cluster. Pure functions.

A run is either stopped (spec.stop) or Pending with conditions saying what it waits
for. Nothing here reports a stage, progress or statistics: no work has been done, and
the status must never claim otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tars_api.meta import Condition, find_condition, set_condition
from tars_api.run import RunConditionType, RunPhase, SelfCodingRun, SelfCodingRunStatus

from tars_operator.replicas import Transition

REASON_NO_READY_COORDINATOR = "NoReadyCoordinator"
REASON_COORDINATOR_READY = "CoordinatorReady"
REASON_WAITING_FOR_REPLICAS = "WaitingForReplicas"
REASON_NOT_IN_CLUSTER = "InClusterRunsUnavailable"
REASON_STOPPED = "Stopped"


@dataclass(frozen=True)
class RunUpdate:
    """The status fields to write (a merge patch) and the Event the change deserves."""

    status: dict[str, Any]
    transition: Transition | None


def _condition(
    conditions: list[Condition], new: Condition, generation: int | None
) -> list[Condition]:
    return set_condition(conditions, new.model_copy(update={"observed_generation": generation}))


def _stopped(
    run: SelfCodingRun, previous: SelfCodingRunStatus, now: datetime
) -> SelfCodingRunStatus:
    message = "spec.stop is true: stopped before any work started"
    generation = run.metadata.generation
    conditions = _condition(
        list(previous.conditions),
        Condition.make(RunConditionType.progressing, False, REASON_STOPPED, message, at=now),
        generation,
    )
    conditions = _condition(
        conditions,
        Condition.make(RunConditionType.complete, True, REASON_STOPPED, message, at=now),
        generation,
    )
    return SelfCodingRunStatus(
        phase=RunPhase.stopped,
        completion_time=previous.completion_time or now,
        conditions=conditions,
        observed_generation=generation,
    )


def _pending(
    run: SelfCodingRun, previous: SelfCodingRunStatus, ready_coordinators: list[str], now: datetime
) -> SelfCodingRunStatus:
    namespace = run.metadata.namespace
    generation = run.metadata.generation
    if ready_coordinators:
        replicas = Condition.make(
            RunConditionType.replicas_ready,
            True,
            REASON_COORDINATOR_READY,
            f"coordinator TarsReplica {', '.join(ready_coordinators)} is ready in namespace {namespace}",
            at=now,
        )
        progressing = Condition.make(
            RunConditionType.progressing,
            False,
            REASON_NOT_IN_CLUSTER,
            "this operator does not hand runs to the coordinator yet; "
            "run the workflow locally with `tarscli self-code run`",
            at=now,
        )
    else:
        replicas = Condition.make(
            RunConditionType.replicas_ready,
            False,
            REASON_NO_READY_COORDINATOR,
            f"no coordinator TarsReplica is ready in namespace {namespace}",
            at=now,
        )
        progressing = Condition.make(
            RunConditionType.progressing,
            False,
            REASON_WAITING_FOR_REPLICAS,
            "waiting for a ready coordinator TarsReplica",
            at=now,
        )
    conditions = _condition(list(previous.conditions), replicas, generation)
    conditions = _condition(conditions, progressing, generation)
    return SelfCodingRunStatus(
        phase=RunPhase.pending, conditions=conditions, observed_generation=generation
    )


def evaluate_run(
    run: SelfCodingRun, ready_coordinators: Iterable[str], *, now: datetime
) -> RunUpdate | None:
    """What to write on a run that has not started; None when nothing must change.

    Runs that are running or finished belong to the workflow and are left alone.
    """
    previous = run.status or SelfCodingRunStatus()
    if previous.phase not in (None, RunPhase.pending):
        return None
    if run.spec.stop:
        desired = _stopped(run, previous, now)
    else:
        desired = _pending(run, previous, sorted(ready_coordinators), now)
    patch = desired.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)
    current = previous.model_dump(mode="json", by_alias=True, include=set(desired.model_fields_set))
    if {key: current.get(key) for key in patch} == patch:
        return None
    return RunUpdate(patch, _transition(previous, desired))


def _transition(previous: SelfCodingRunStatus, current: SelfCodingRunStatus) -> Transition | None:
    if current.phase is RunPhase.stopped:
        return Transition("Normal", REASON_STOPPED, "run stopped by spec.stop before it started")
    before = find_condition(previous.conditions, RunConditionType.replicas_ready)
    after = find_condition(current.conditions, RunConditionType.replicas_ready)
    if after is None or (
        before is not None and (before.status, before.reason) == (after.status, after.reason)
    ):
        return None
    return Transition("Normal" if after.is_true else "Warning", after.reason, after.message)
