"""SelfCodingRun status before a coordinator takes it. Pure functions.

A run is either stopped (spec.stop) or Pending with conditions saying what it waits
for; `run_driver` hands it to a coordinator once every role is ready. Nothing here reports a stage, progress or statistics: no work has been done, and
the status must never claim otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tars_api.meta import Condition, find_condition, set_conditions
from tars_api.run import (
    RunConditionType,
    RunPhase,
    RunReason,
    SelfCodingRun,
    SelfCodingRunStatus,
)
from tars_api.vocabulary import WORKER_ROLES, Role

from tars_operator.replicas import Transition

# Every role a run needs a ready TarsReplica of before it is handed to a coordinator.
REQUIRED_ROLES = (Role.coordinator, *WORKER_ROLES)


@dataclass(frozen=True)
class RunUpdate:
    """The status fields to write (a merge patch) and the Event the change deserves."""

    status: dict[str, Any]
    transition: Transition | None


def _stopped(
    run: SelfCodingRun, previous: SelfCodingRunStatus, now: datetime
) -> SelfCodingRunStatus:
    message = "spec.stop is true: stopped before any work started"
    generation = run.metadata.generation
    conditions = set_conditions(
        previous.conditions,
        Condition.make(RunConditionType.progressing, False, RunReason.stopped, message, at=now),
        Condition.make(RunConditionType.complete, True, RunReason.stopped, message, at=now),
        generation=generation,
    )
    return SelfCodingRunStatus(
        phase=RunPhase.stopped,
        completion_time=previous.completion_time or now,
        conditions=conditions,
        observed_generation=generation,
    )


def missing_roles(ready_by_role: Mapping[Role, Iterable[str]]) -> list[Role]:
    """The roles a run needs that have no ready TarsReplica."""
    return [role for role in REQUIRED_ROLES if not list(ready_by_role.get(role, []))]


def _pending(
    run: SelfCodingRun,
    previous: SelfCodingRunStatus,
    ready_by_role: Mapping[Role, Iterable[str]],
    now: datetime,
) -> SelfCodingRunStatus:
    namespace = run.metadata.namespace
    generation = run.metadata.generation
    missing = missing_roles(ready_by_role)
    if not missing:
        coordinators = ", ".join(sorted(ready_by_role[Role.coordinator]))
        replicas = Condition.make(
            RunConditionType.replicas_ready,
            True,
            RunReason.replicas_ready,
            f"coordinator TarsReplica {coordinators} and every worker role are ready "
            f"in namespace {namespace}",
            at=now,
        )
        progressing = Condition.make(
            RunConditionType.progressing,
            False,
            RunReason.assigning,
            f"handing the run to coordinator {coordinators}",
            at=now,
        )
    else:
        if Role.coordinator in missing:
            reason = RunReason.no_ready_coordinator
            message = f"no coordinator TarsReplica is ready in namespace {namespace}"
            others = [role for role in missing if role is not Role.coordinator]
            if others:
                message += f"; none for {', '.join(role.value for role in others)} either"
        else:
            reason = RunReason.no_ready_workers
            message = (
                f"no ready TarsReplica for {', '.join(role.value for role in missing)} "
                f"in namespace {namespace}"
            )
        replicas = Condition.make(RunConditionType.replicas_ready, False, reason, message, at=now)
        progressing = Condition.make(
            RunConditionType.progressing,
            False,
            RunReason.waiting_for_replicas,
            f"waiting for ready {', '.join(role.value for role in missing)} TarsReplicas",
            at=now,
        )
    conditions = set_conditions(previous.conditions, replicas, progressing, generation=generation)
    return SelfCodingRunStatus(
        phase=RunPhase.pending, conditions=conditions, observed_generation=generation
    )


def evaluate_run(
    run: SelfCodingRun, ready_by_role: Mapping[Role, Iterable[str]], *, now: datetime
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
        desired = _pending(run, previous, ready_by_role, now)
    patch = desired.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)
    current = previous.model_dump(mode="json", by_alias=True, include=set(desired.model_fields_set))
    if {key: current.get(key) for key in patch} == patch:
        return None
    return RunUpdate(patch, _transition(previous, desired))


def _transition(previous: SelfCodingRunStatus, current: SelfCodingRunStatus) -> Transition | None:
    if current.phase is RunPhase.stopped:
        return Transition("Normal", RunReason.stopped, "run stopped by spec.stop before it started")
    before = find_condition(previous.conditions, RunConditionType.replicas_ready)
    after = find_condition(current.conditions, RunConditionType.replicas_ready)
    if after is None or (
        before is not None and (before.status, before.reason) == (after.status, after.reason)
    ):
        return None
    return Transition("Normal" if after.is_true else "Warning", after.reason, after.message)
