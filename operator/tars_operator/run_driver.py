"""Driving a SelfCodingRun through a coordinator replica: pure decisions plus one loop per run.

The operator hands a run to a ready coordinator pod (an address from the coordinator
Service's EndpointSlices, so the operator also works outside the cluster), then mirrors
the coordinator's `RunReport` onto the run's status about once a second. Everything the
status says comes from the report: the operator never invents progress.

State kept on the cluster, owned by the run (deleted with it):
- ConfigMap `<run>-state`: the coordinator's address and the last checkpoint. A new
  coordinator (the old one died) or a restarted operator resumes from it.
- ConfigMap `<run>-report`: the full report (JSON) and the patch, written once the run ended.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic import ValidationError
from tars_api.meta import Condition, set_conditions
from tars_api.names import (
    ADDRESS_KEY,
    CHECKPOINT_KEY,
    PATCH_KEY,
    REPORT_KEY,
    report_config_map,
    state_config_map,
)
from tars_api.run import (
    RunConditionType,
    RunPhase,
    RunReason,
    SelfCodingRun,
    SelfCodingRunStatus,
)
from tars_api.vocabulary import Role
from tars_engine.contract import (
    CoordinatorApiError,
    CoordinatorClient,
    RunAssignment,
    RunNotFoundError,
    RunReport,
    WorkflowState,
    slice_ready_urls,
)

from tars_operator.kube import CONFIG_MAPS, SELF_CODING_RUNS, ApiError, KubeClient
from tars_operator.replicas import Transition
from tars_operator.runs import missing_roles, own_testers

POLL_SECONDS = 1.0
WAIT_SECONDS = 2.0
COORDINATOR_TIMEOUT_SECONDS = 10.0
MAX_REASSIGNMENTS = 5

log = logging.getLogger(__name__)


# --- pure decisions -----------------------------------------------------------------------


def coordinator_urls(endpoint_slices: Iterable[Mapping[str, Any]]) -> list[str]:
    """Ready coordinator pod URLs from the EndpointSlices of the coordinator Services."""
    urls: set[str] = set()
    for endpoint_slice in endpoint_slices:
        urls.update(slice_ready_urls(dict(endpoint_slice)))
    return sorted(urls)


def deadline_passed(run: SelfCodingRun, now: datetime.datetime) -> bool:
    status = run.status or SelfCodingRunStatus()
    if status.start_time is None:
        return False
    return now >= status.start_time + datetime.timedelta(seconds=run.spec.deadline_seconds)


@dataclass(frozen=True)
class Outcome:
    """How the run ends when the coordinator's report is not the whole story."""

    phase: RunPhase
    reason: str
    message: str


def mirrored_status(
    run: SelfCodingRun,
    report: RunReport,
    coordinator: str,
    *,
    now: datetime.datetime,
    reassignments: int = 0,
    outcome: Outcome | None = None,
) -> SelfCodingRunStatus:
    """The run's status from the coordinator's report; conditions are the operator's."""
    previous = run.status or SelfCodingRunStatus()
    generation = run.metadata.generation
    reported = report.status
    phase = outcome.phase if outcome is not None else (reported.phase or RunPhase.running)
    if not report.finished and outcome is None:
        phase = RunPhase.running
    replicas_ready = Condition.make(
        RunConditionType.replicas_ready,
        True,
        RunReason.replicas_ready,
        f"coordinator {coordinator} runs the workflow",
        at=now,
    )
    if phase.is_terminal:
        reason = outcome.reason if outcome is not None else str(phase)
        message = outcome.message if outcome is not None else (report.message or str(phase))
        conditions = set_conditions(
            previous.conditions,
            replicas_ready,
            Condition.make(RunConditionType.progressing, False, reason, message, at=now),
            Condition.make(RunConditionType.complete, True, reason, message, at=now),
            generation=generation,
        )
    else:
        reason = RunReason.reassigned if reassignments else RunReason.running
        message = report.message or f"stage {reported.stage}"
        if reassignments:
            message = f"resumed on another coordinator ({reassignments}x): {message}"
        conditions = set_conditions(
            previous.conditions,
            replicas_ready,
            Condition.make(RunConditionType.progressing, True, reason, message, at=now),
            generation=generation,
        )
    return reported.model_copy(
        update={
            "phase": phase,
            "coordinator": coordinator,
            "report_config_map": previous.report_config_map,
            "completion_time": reported.completion_time
            or (now.replace(microsecond=0) if phase.is_terminal else None),
            "conditions": conditions,
            "observed_generation": generation,
        }
    )


def failed_status(
    run: SelfCodingRun, reason: str, message: str, *, now: datetime.datetime
) -> SelfCodingRunStatus:
    """The run ended without a report to mirror (no coordinator could take it)."""
    previous = run.status or SelfCodingRunStatus()
    generation = run.metadata.generation
    conditions = set_conditions(
        previous.conditions,
        Condition.make(RunConditionType.progressing, False, reason, message, at=now),
        Condition.make(RunConditionType.complete, True, reason, message, at=now),
        generation=generation,
    )
    return previous.model_copy(
        update={
            "phase": RunPhase.failed,
            "current_file": None,
            "completion_time": previous.completion_time or now.replace(microsecond=0),
            "conditions": conditions,
            "observed_generation": generation,
        }
    )


def status_document(status: SelfCodingRunStatus) -> dict[str, Any]:
    """The status as written: absent fields are null, so a merge patch clears them."""
    return status.model_dump(mode="json", by_alias=True)


def _comparable(document: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in document.items() if value not in (None, [], {})}


def status_changed(previous: SelfCodingRunStatus | None, desired: SelfCodingRunStatus) -> bool:
    before = _comparable(status_document(previous or SelfCodingRunStatus()))
    return before != _comparable(status_document(desired))


def transitions(
    previous: SelfCodingRunStatus | None, current: SelfCodingRunStatus
) -> list[Transition]:
    """Events for a moved phase and a moved stage."""
    previous = previous or SelfCodingRunStatus()
    events: list[Transition] = []
    if current.phase != previous.phase and current.phase is not None:
        failed = current.phase is RunPhase.failed
        complete = [c for c in current.conditions if c.type == RunConditionType.complete]
        detail = f": {complete[0].message}" if current.phase.is_terminal and complete else ""
        events.append(
            Transition(
                "Warning" if failed else "Normal",
                str(current.phase),
                f"phase {current.phase}{detail}",
            )
        )
    if current.stage != previous.stage and current.stage is not None:
        where = f" ({current.current_file})" if current.current_file else ""
        events.append(
            Transition("Normal", f"Stage{current.stage}", f"stage {current.stage}{where}")
        )
    return events


# --- the loop ------------------------------------------------------------------------------


@dataclass
class RunState:
    """What the operator keeps for a run between steps (and in `<run>-state`)."""

    address: str | None = None
    checkpoint: WorkflowState | None = None
    loaded: bool = False
    stop_sent: bool = False
    deadline_hit: bool = False
    reassignments: int = 0


ClientFactory = Callable[[str], CoordinatorClient]


def _client(url: str) -> CoordinatorClient:
    return CoordinatorClient(url, timeout_seconds=COORDINATOR_TIMEOUT_SECONDS)


def _owner(run: SelfCodingRun) -> dict[str, Any]:
    return run.owner_reference().to_dict()


@dataclass
class RunDriver:
    """One run's loop body; `step` returns the seconds to wait, or None when the run is over."""

    kube: KubeClient
    namespace: str
    name: str
    post: Callable[[dict[str, Any], Transition], None]
    client_factory: ClientFactory = _client
    now: Callable[[], datetime.datetime] = field(
        default=lambda: datetime.datetime.now(datetime.UTC)
    )
    state: RunState = field(default_factory=RunState)

    # --- cluster reads and writes ---

    def _read_run(self) -> tuple[dict[str, Any], SelfCodingRun] | None:
        body = self.kube.get(SELF_CODING_RUNS, self.namespace, self.name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        return body, SelfCodingRun.model_validate(body)

    def _load_state(self) -> None:
        if self.state.loaded:
            return
        stored = self.kube.get(CONFIG_MAPS, self.namespace, state_config_map(self.name))
        data = (stored or {}).get("data") or {}
        self.state.address = data.get(ADDRESS_KEY) or None
        if data.get(CHECKPOINT_KEY):
            try:
                self.state.checkpoint = WorkflowState.model_validate_json(data[CHECKPOINT_KEY])
            except ValidationError as error:
                log.warning(
                    "run %s/%s: stored checkpoint unreadable: %s", self.namespace, self.name, error
                )
        self.state.loaded = True

    def _save_state(self, run: SelfCodingRun) -> None:
        data = {ADDRESS_KEY: self.state.address or ""}
        if self.state.checkpoint is not None:
            data[CHECKPOINT_KEY] = self.state.checkpoint.model_dump_json(by_alias=True)
        self._apply_config_map(run, state_config_map(self.name), data)

    def _apply_config_map(self, run: SelfCodingRun, name: str, data: dict[str, str]) -> None:
        self.kube.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": name,
                    "namespace": self.namespace,
                    "ownerReferences": [_owner(run)],
                },
                "data": data,
            }
        )

    def _write_status(
        self, body: dict[str, Any], run: SelfCodingRun, desired: SelfCodingRunStatus
    ) -> None:
        if not status_changed(run.status, desired):
            return
        self.kube.request(
            "PATCH",
            SELF_CODING_RUNS.path(self.namespace, self.name, "status"),
            body={"status": status_document(desired)},
            content_type="application/merge-patch+json",
        )
        for transition in transitions(run.status, desired):
            self.post(body, transition)

    def _coordinators(self, ready_coordinators: Iterable[str]) -> list[str]:
        urls: list[str] = []
        for replica in ready_coordinators:
            listed = self.kube.request(
                "GET",
                f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices",
                query={"labelSelector": f"kubernetes.io/service-name={replica}"},
            )
            urls.extend(coordinator_urls(listed.get("items") or []))
        return urls

    # --- the step ---

    def step(self, replicas: Iterable[IndexedReplica]) -> float | None:
        """One look at the run, given the namespace's TarsReplicas as the index has them."""
        read = self._read_run()
        if read is None:
            return None
        body, run = read
        status = run.status or SelfCodingRunStatus()
        if status.phase is not None and status.phase.is_terminal:
            return None
        ready_by_role = ready_roles(replicas, own_testers(run))
        self._load_state()
        if status.phase in (None, RunPhase.pending) and self.state.address is None:
            # Pending runs belong to `runs.evaluate_run` until every role is ready.
            if run.spec.stop or missing_roles(ready_by_role):
                return WAIT_SECONDS
            return self._assign(body, run, ready_by_role, fresh=True)
        return self._mirror(body, run, ready_by_role)

    def _assignment(self, run: SelfCodingRun) -> RunAssignment:
        return RunAssignment(
            namespace=self.namespace,
            name=self.name,
            uid=run.metadata.uid or "",
            spec=run.spec,
            checkpoint=self.state.checkpoint,
        )

    def _assign(
        self,
        body: dict[str, Any],
        run: SelfCodingRun,
        ready_by_role: Mapping[Role, Iterable[str]],
        *,
        fresh: bool,
    ) -> float | None:
        coordinators = sorted(ready_by_role.get(Role.coordinator, []))
        urls = self._coordinators(coordinators)
        errors: list[str] = []
        for url in urls:
            try:
                with self.client_factory(url) as coordinator:
                    report = coordinator.assign(self._assignment(run))
            except CoordinatorApiError as error:
                errors.append(str(error))
                continue
            self.state.address = url
            if not fresh:
                self.state.reassignments += 1
            self._save_state(run)
            self._apply_report(body, run, report, coordinators[0] if coordinators else url)
            return POLL_SECONDS
        # A restarted coordinator container is not ready again until its readiness probe
        # passes (up to initialDelay plus a period): waiting for one is no failed attempt.
        if not fresh and urls:
            self.state.reassignments += 1
            if self.state.reassignments > MAX_REASSIGNMENTS:
                message = (
                    f"no coordinator could take the run after {MAX_REASSIGNMENTS} attempts: "
                    f"{errors[-1]}"
                )
                self._write_status(
                    body,
                    run,
                    failed_status(run, RunReason.coordinator_lost, message, now=self.now()),
                )
                return None
        log.info("run %s/%s: no coordinator took it yet: %s", self.namespace, self.name, errors)
        return WAIT_SECONDS

    def _mirror(
        self, body: dict[str, Any], run: SelfCodingRun, ready_by_role: Mapping[Role, Iterable[str]]
    ) -> float | None:
        address = self.state.address
        if address is None:
            return self._assign(body, run, ready_by_role, fresh=False)
        uid = run.metadata.uid or ""
        try:
            with self.client_factory(address) as coordinator:
                if run.spec.stop and not self.state.stop_sent:
                    coordinator.stop(uid)
                    self.state.stop_sent = True
                elif (
                    not self.state.stop_sent
                    and not self.state.deadline_hit
                    and deadline_passed(run, self.now())
                ):
                    coordinator.stop(uid)
                    self.state.deadline_hit = self.state.stop_sent = True
                report = coordinator.report(uid)
        except RunNotFoundError:
            log.info(
                "run %s/%s: coordinator %s lost it; assigning again",
                self.namespace,
                self.name,
                address,
            )
            return self._assign(body, run, ready_by_role, fresh=False)
        except CoordinatorApiError as error:
            log.info("run %s/%s: %s; assigning again", self.namespace, self.name, error)
            return self._assign(body, run, ready_by_role, fresh=False)
        return self._apply_report(
            body, run, report, (run.status or SelfCodingRunStatus()).coordinator or address
        )

    def _apply_report(
        self, body: dict[str, Any], run: SelfCodingRun, report: RunReport, coordinator: str
    ) -> float | None:
        if report.checkpoint is not None and report.checkpoint != self.state.checkpoint:
            self.state.checkpoint = report.checkpoint
            self._save_state(run)
        outcome = None
        # The coordinator enforces the deadline too; whichever notices first, it is the reason.
        ran_out = self.state.deadline_hit or (
            report.status.phase is RunPhase.failed and deadline_passed(run, self.now())
        )
        if ran_out and report.finished:
            message = f"deadlineSeconds ({run.spec.deadline_seconds}) exceeded; the run was stopped"
            outcome = Outcome(RunPhase.failed, RunReason.deadline_exceeded, message)
        desired = mirrored_status(
            run,
            report,
            coordinator,
            now=self.now(),
            reassignments=self.state.reassignments,
            outcome=outcome,
        )
        if report.finished:
            desired.report_config_map = self._write_report(run)
        self._write_status(body, run, desired)
        return None if report.finished else POLL_SECONDS

    def _write_report(self, run: SelfCodingRun) -> str:
        assert self.state.address is not None
        uid = run.metadata.uid or ""
        with self.client_factory(self.state.address) as coordinator:
            results = coordinator.results(uid)
            patch = coordinator.patch(uid)
        name = report_config_map(self.name)
        self._apply_config_map(
            run, name, {REPORT_KEY: json.dumps(results.to_dict(), indent=1), PATCH_KEY: patch}
        )
        return name


class IndexedReplica(NamedTuple):
    """A TarsReplica as the operator's readiness index keeps it."""

    role: str
    name: str
    ready: bool
    run: str
    """The run it belongs to (its tars.dev/run label); empty: the namespace's shared replica."""


def ready_roles(
    entries: Iterable[IndexedReplica], own_testers: str | None = None
) -> dict[Role, list[str]]:
    """role -> ready TarsReplica names a run may use, from the readiness index entries.

    Replicas of a run are never shared; with `own_testers`, the testers of that run stand
    in for the shared testers.
    """
    ready: dict[Role, list[str]] = {}
    for entry in entries:
        role = Role(entry.role)
        shared = not entry.run and (own_testers is None or role is not Role.tester)
        own = bool(entry.run) and entry.run == own_testers and role is Role.tester
        if entry.ready and (shared or own):
            ready.setdefault(role, []).append(entry.name)
    return {role: sorted(names) for role, names in ready.items()}


def api_error_delay(error: ApiError) -> float:
    """How long to wait after a failed API call: a conflict is retried at once."""
    return 0.0 if error.status == 409 else WAIT_SECONDS
