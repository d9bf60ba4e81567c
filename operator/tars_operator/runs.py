"""SelfCodingRun status before a coordinator takes it, and a run's own tester. Pure functions.

A run is either stopped (spec.stop) or Pending with conditions saying what it waits
for; `run_driver` hands it to a coordinator once every role is ready. Nothing here reports a stage, progress or statistics: no work has been done, and
the status must never claim otherwise.

A run with a test image (spec.testEnvironment.image) gets a tester TarsReplica of its own,
`<run>-tester`, of that image: owned by the run and labelled with its name, so that the
namespace's shared testers never test the run and it never tests another. The run waits
for it instead of a shared tester; once the run has ended it is deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tars_api.meta import Condition, find_condition, set_conditions
from tars_api.names import (
    LABEL_MANAGED_BY,
    LABEL_PART_OF,
    MANAGED_BY_OPERATOR,
    PART_OF,
    RUN_LABEL,
    run_tester,
)
from tars_api.replica import TarsReplica
from tars_api.run import (
    RunConditionType,
    RunPhase,
    RunReason,
    SelfCodingRun,
    SelfCodingRunStatus,
)
from tars_api.vocabulary import WORKER_ROLES, Role

from tars_operator.replicas import InvalidReplica, Manifest, Transition, child_name

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


def own_testers(run: SelfCodingRun) -> str | None:
    """The run whose own testers test `run` (one with a test image); None: the shared ones."""
    return run.name if run.spec.test_image is not None else None


def desired_run_tester(run: SelfCodingRun) -> Manifest | None:
    """The tester TarsReplica of a run with a test image; None for any other run.

    Raises InvalidReplica when the run's name cannot name it (and its Service).
    """
    image = run.spec.test_image
    if image is None:
        return None
    labels = {RUN_LABEL: run.name, LABEL_PART_OF: PART_OF, LABEL_MANAGED_BY: MANAGED_BY_OPERATOR}
    replica = TarsReplica.build(
        run_tester(run.name),
        Role.tester,
        namespace=run.metadata.namespace,
        labels=labels,
        replicas=1,
        image=image,
    )
    try:
        child_name(replica)
    except InvalidReplica as error:
        raise InvalidReplica(
            f"spec.testEnvironment.image needs a tester replica of the run's own, named after "
            f"the run: {error} (name the run at most 56 such characters)"
        ) from error
    manifest = replica.to_k8s()
    manifest["metadata"]["ownerReferences"] = [run.owner_reference().to_dict()]
    return manifest


def require_own_run_tester(run: SelfCodingRun, current: Manifest | None) -> None:
    """Raises InvalidReplica when a TarsReplica named like the run's tester is not the run's."""
    owners = (current or {}).get("metadata", {}).get("ownerReferences") or []
    if current is None or any(owner.get("uid") == run.metadata.uid for owner in owners):
        return
    raise InvalidReplica(
        f"TarsReplica {run_tester(run.name)} exists and is not this run's: it cannot be the "
        "tester of the run's test image (delete it, or name the run otherwise)"
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
    image = run.spec.test_image
    if not missing:
        coordinators = ", ".join(sorted(ready_by_role[Role.coordinator]))
        own = f" (the run's own tester {run_tester(run.name)})" if image is not None else ""
        replicas = Condition.make(
            RunConditionType.replicas_ready,
            True,
            RunReason.replicas_ready,
            f"coordinator TarsReplica {coordinators} and every worker role{own} are ready "
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
        elif image is not None and Role.tester in missing:
            reason = RunReason.no_ready_run_tester
            message = (
                f"the run's own tester, TarsReplica {run_tester(run.name)} of image {image}, "
                f"is not ready in namespace {namespace}"
            )
            workers = [role.value for role in missing if role is not Role.tester]
            if workers:
                message += f"; no ready TarsReplica for {', '.join(workers)}"
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
