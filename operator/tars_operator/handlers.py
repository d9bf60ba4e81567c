"""kopf handlers: thin adapters between kopf's events and the pure reconcile functions.

- TarsReplica create/update/resume: apply the Deployment and Service (server-side apply).
- Deployment events (labelled managed-by tars-operator): the owner's status follows the
  Deployment's; this is the only writer of TarsReplica status after a successful apply.
- Deployment/Service deletion while the owner lives: the child is applied again.
- SelfCodingRun create/update/resume, and TarsReplica events: re-evaluate runs that have
  not started (the readiness index says which replicas of each role are ready). A run
  with a test image gets its own tester TarsReplica first (`runs.desired_run_tester`).
- SelfCodingRun events of an ended run: its own tester, if it has one, is deleted.
- A daemon per active SelfCodingRun: `run_driver` hands it to a coordinator and mirrors
  the coordinator's report onto its status until it ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
from pydantic import ValidationError
from tars_api.meta import GROUP, VERSION, now
from tars_api.names import LABEL_MANAGED_BY, MANAGED_BY_OPERATOR, RUN_LABEL, run_tester
from tars_api.replica import TARS_REPLICA_PLURAL, ReplicaReason, TarsReplica, TarsReplicaStatus
from tars_api.run import SELF_CODING_RUN_PLURAL, RunPhase, RunReason, SelfCodingRun
from tars_engine.contract import CoordinatorApiError

from tars_operator import metrics, replicas, run_driver, runs
from tars_operator.config import OperatorConfig
from tars_operator.kube import (
    SELF_CODING_RUNS,
    TARS_REPLICAS,
    ApiError,
    KubeClient,
    connection_info,
)

HANDLER_RETRIES = 5
HANDLER_BACKOFF_SECONDS = 3.0
TR = (GROUP, VERSION, TARS_REPLICA_PLURAL)
SCR = (GROUP, VERSION, SELF_CODING_RUN_PLURAL)
MANAGED_CHILDREN = {LABEL_MANAGED_BY: MANAGED_BY_OPERATOR}

log = logging.getLogger(__name__)


@dataclass
class ReplicaStatusCache:
    """The status last written to each replica.

    The operator is the only writer of TarsReplica status, so what it wrote is the
    freshest previous status; a cache miss (after a restart) reads the object once.
    """

    _entries: dict[tuple[str, str], tuple[str, TarsReplicaStatus]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, owner: replicas.OwnerRef) -> TarsReplicaStatus | None:
        with self._lock:
            entry = self._entries.get((owner.namespace, owner.name))
        return entry[1] if entry is not None and entry[0] == owner.uid else None

    def seed(self, owner: replicas.OwnerRef, status: TarsReplicaStatus) -> None:
        """Remember `status` (read with the object) unless a written one is known already."""
        with self._lock:
            self._entries.setdefault((owner.namespace, owner.name), (owner.uid, status))

    def put(self, owner: replicas.OwnerRef, status: TarsReplicaStatus) -> None:
        with self._lock:
            self._entries[(owner.namespace, owner.name)] = (owner.uid, status)

    def forget(self, owner: replicas.OwnerRef) -> None:
        with self._lock:
            self._entries.pop((owner.namespace, owner.name), None)


@dataclass
class Runtime:
    """What every handler needs; passed to kopf as the operator's memo."""

    config: OperatorConfig
    kube: KubeClient
    replica_statuses: ReplicaStatusCache = field(default_factory=ReplicaStatusCache)
    _ready_replicas: dict[str, frozenset[run_driver.IndexedReplica]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def readiness_changed(self, namespace: str, replicas: list[run_driver.IndexedReplica]) -> bool:
        """Remember the ready replicas of `namespace`; True when they differ from last time."""
        ready = frozenset(replica for replica in replicas if replica.ready)
        with self._lock:
            changed = self._ready_replicas.get(namespace) != ready
            self._ready_replicas[namespace] = ready
        return changed


def _runtime(memo: Any) -> Runtime:
    runtime: Runtime = memo.runtime
    return runtime


def _post(target: Mapping[str, Any], transition: replicas.Transition | None) -> None:
    """An Event on `target`: a manifest with apiVersion, kind and metadata."""
    if transition is not None:
        body = kopf.Body(cast(kopf.RawBody, target))
        kopf.event(body, type=transition.type, reason=transition.reason, message=transition.message)


def _retry_or_fail(error: ApiError) -> kopf.PermanentError | kopf.TemporaryError:
    if error.is_permanent:
        return kopf.PermanentError(str(error))
    return kopf.TemporaryError(str(error), delay=HANDLER_BACKOFF_SECONDS)


@kopf.on.login()
def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """kopf watches with the credentials the operator was started with."""
    return connection_info(_runtime(memo).kube.configuration)


# --- TarsReplica -> children ------------------------------------------------------------


def _owner(replica: TarsReplica) -> replicas.OwnerRef:
    return replicas.OwnerRef(
        replica.metadata.namespace or "", replica.name, replica.metadata.uid or ""
    )


def _write_replica_status(
    runtime: Runtime,
    owner: replicas.OwnerRef,
    previous: TarsReplicaStatus | None,
    status: TarsReplicaStatus,
    *,
    announce: bool = True,
) -> bool:
    """Patch the status when it differs from `previous`; post an Event when the phase moved."""
    if previous is not None and previous.to_dict() == status.to_dict():
        return False
    written = runtime.kube.patch_status(
        TARS_REPLICAS, owner.namespace, owner.name, status.to_dict()
    )
    runtime.replica_statuses.put(
        owner, TarsReplicaStatus.model_validate(written.get("status") or {})
    )
    if announce:
        _post(owner.event_target(), replicas.replica_transition(previous, status))
    return True


def _report_failure(runtime: Runtime, replica: TarsReplica, reason: str, message: str) -> None:
    owner = _owner(replica)
    previous = replica.status
    failed = replicas.failed_status(
        previous, reason, message, replica.metadata.generation or 0, now=now()
    )
    try:
        _write_replica_status(runtime, owner, previous, failed, announce=False)
    except ApiError as error:
        log.warning(
            "cannot record the failure on TarsReplica %s/%s: %s", owner.namespace, owner.name, error
        )
    _post(owner.event_target(), replicas.Transition("Warning", reason, message))


def _apply_children(runtime: Runtime, replica: TarsReplica, *, final_attempt: bool = True) -> None:
    """Apply both children; a failure that will not be retried is recorded on the replica."""
    try:
        manifests = [
            replicas.desired_deployment(replica, runtime.config),
            replicas.desired_service(replica, runtime.config),
        ]
    except replicas.InvalidReplica as error:
        _report_failure(runtime, replica, ReplicaReason.invalid_spec, str(error))
        raise kopf.PermanentError(str(error)) from error
    try:
        for manifest in manifests:
            runtime.kube.apply(manifest)
    except ApiError as error:
        if error.is_permanent or final_attempt:
            _report_failure(runtime, replica, ReplicaReason.apply_failed, error.message)
        raise _retry_or_fail(error) from error


@kopf.on.resume(*TR, retries=HANDLER_RETRIES, backoff=HANDLER_BACKOFF_SECONDS)
@kopf.on.create(*TR, retries=HANDLER_RETRIES, backoff=HANDLER_BACKOFF_SECONDS)
@kopf.on.update(*TR, field="spec", retries=HANDLER_RETRIES, backoff=HANDLER_BACKOFF_SECONDS)
def reconcile_replica(body: kopf.Body, memo: Any, reason: str, retry: int, **_: Any) -> None:
    runtime = _runtime(memo)
    with metrics.measure("TarsReplica") as meter:
        replica = TarsReplica.model_validate(dict(body))
        # The Deployment's first event then needs no read of the replica.
        runtime.replica_statuses.seed(_owner(replica), replica.status or TarsReplicaStatus())
        _apply_children(runtime, replica, final_attempt=retry + 1 >= HANDLER_RETRIES)
        meter.changed()
    if reason == kopf.Reason.CREATE:
        message = f"Deployment and Service {replica.name} applied"
        _post(body, replicas.Transition("Normal", ReplicaReason.created, message))
    elif reason == kopf.Reason.UPDATE:
        message = f"generation {replica.metadata.generation} applied to the Deployment and Service"
        _post(body, replicas.Transition("Normal", ReplicaReason.updated, message))


def _restore_child(runtime: Runtime, owner: replicas.OwnerRef, kind: str) -> None:
    """A child was deleted: apply it again unless its owner is gone or going."""
    current = runtime.kube.get(TARS_REPLICAS, owner.namespace, owner.name)
    if current is None or current["metadata"].get("uid") != owner.uid:
        return
    if current["metadata"].get("deletionTimestamp"):
        return
    replica = TarsReplica.model_validate(current)
    _apply_children(runtime, replica)
    _post(
        owner.event_target(),
        replicas.Transition(
            "Normal", ReplicaReason.restored, f"{kind} {owner.name} was deleted; applied again"
        ),
    )


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED_CHILDREN)
def follow_deployment(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    deployment = dict(body)
    owner = replicas.owner_of(deployment)
    if owner is None:
        return
    with metrics.measure("Deployment") as meter:
        if type == "DELETED":
            runtime.replica_statuses.forget(owner)
            _restore_child(runtime, owner, "Deployment")
            return
        previous = runtime.replica_statuses.get(owner)
        if previous is None:
            current = runtime.kube.get(TARS_REPLICAS, owner.namespace, owner.name)
            if current is None or current["metadata"].get("uid") != owner.uid:
                return
            previous = TarsReplicaStatus.model_validate(current.get("status") or {})
        status = replicas.replica_status(deployment, previous, runtime.config, now=now())
        try:
            meter.changed(_write_replica_status(runtime, owner, previous, status))
        except ApiError as error:
            if not error.is_not_found:
                raise


@kopf.on.event("", "v1", "services", labels=MANAGED_CHILDREN)
def follow_service(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    owner = replicas.owner_of(dict(body))
    if type == "DELETED" and owner is not None:
        with metrics.measure("Service"):
            _restore_child(_runtime(memo), owner, "Service")


# --- SelfCodingRun before the workflow ---------------------------------------------------


@kopf.index(*TR)
def replica_readiness(
    namespace: str | None,
    name: str,
    labels: kopf.Labels,
    spec: kopf.Spec,
    status: kopf.Status,
    **_: Any,
) -> dict[str, run_driver.IndexedReplica] | None:
    """namespace -> role, name, readiness and run (if it is a run's own) of every TarsReplica."""
    if namespace is None or not spec.get("role"):
        return None
    role = str(spec.get("role"))
    run = str(labels.get(RUN_LABEL, ""))
    try:
        parsed = TarsReplicaStatus.model_validate(dict(status))
    except ValidationError:
        return {namespace: run_driver.IndexedReplica(role, name, False, run)}
    return {namespace: run_driver.IndexedReplica(role, name, parsed.is_ready, run)}


@kopf.index(*SCR)
def waiting_runs(
    namespace: str | None, name: str, status: kopf.Status, **_: Any
) -> dict[str, str] | None:
    """namespace -> name of every run that has not started."""
    if namespace is None or status.get("phase") not in (None, RunPhase.pending.value):
        return None
    return {namespace: name}


ReadinessIndex = kopf.Index[str, run_driver.IndexedReplica]


def _replicas(index: ReadinessIndex, namespace: str) -> list[run_driver.IndexedReplica]:
    return list(index.get(namespace, []))


def _patch_run_status(runtime: Runtime, run: SelfCodingRun, status: dict[str, Any]) -> None:
    """A merge patch carrying the resourceVersion the decision was made on, so it cannot
    overwrite a status someone else (the run's driver) wrote meanwhile."""
    runtime.kube.request(
        "PATCH",
        SELF_CODING_RUNS.path(run.metadata.namespace or "", run.name, "status"),
        body={"metadata": {"resourceVersion": run.metadata.resource_version}, "status": status},
        content_type="application/merge-patch+json",
    )


def _evaluate_run(
    runtime: Runtime, body: dict[str, Any], indexed: list[run_driver.IndexedReplica]
) -> bool:
    """Write the pre-workflow status of one run; False when it already had it."""
    run = SelfCodingRun.model_validate(body)
    ready_by_role = run_driver.ready_roles(indexed, runs.own_testers(run))
    update = runs.evaluate_run(run, ready_by_role, now=now())
    if update is None:
        return False
    _patch_run_status(runtime, run, update.status)
    _post(body, update.transition)
    return True


def _apply_run_tester(runtime: Runtime, body: dict[str, Any]) -> bool:
    """Apply the run's own tester, if it has a test image; False when the run cannot have one
    (the run has failed, saying why)."""
    run = SelfCodingRun.model_validate(body)
    if run.is_terminal or run.spec.stop:
        return True
    try:
        manifest = runs.desired_run_tester(run)
        if manifest is None:
            return True
        namespace = run.metadata.namespace or ""
        current = runtime.kube.get(TARS_REPLICAS, namespace, manifest["metadata"]["name"])
        runs.require_own_run_tester(run, current)
    except replicas.InvalidReplica as error:
        message = str(error)
        failed = run_driver.failed_status(run, RunReason.run_tester_invalid, message, now=now())
        _patch_run_status(runtime, run, run_driver.status_document(failed))
        _post(body, replicas.Transition("Warning", RunReason.run_tester_invalid, message))
        return False
    runtime.kube.apply(manifest)
    return True


@kopf.on.resume(*SCR, retries=HANDLER_RETRIES, backoff=HANDLER_BACKOFF_SECONDS)
@kopf.on.create(*SCR, retries=HANDLER_RETRIES, backoff=HANDLER_BACKOFF_SECONDS)
# kopf passes its indices as extra keyword arguments, which its callback protocols don't declare.
@kopf.on.update(*SCR, field="spec", retries=HANDLER_RETRIES, backoff=HANDLER_BACKOFF_SECONDS)  # type: ignore[arg-type]
def reconcile_run(
    body: kopf.Body,
    namespace: str,
    memo: kopf.Memo,
    replica_readiness: ReadinessIndex,
    **_: Any,
) -> None:
    runtime = _runtime(memo)
    with metrics.measure("SelfCodingRun") as meter:
        try:
            if _apply_run_tester(runtime, dict(body)):
                meter.changed(
                    _evaluate_run(runtime, dict(body), _replicas(replica_readiness, namespace))
                )
            else:
                meter.changed()
        except ApiError as error:
            # 409: the run changed since this event; kopf retries with the fresh object.
            raise _retry_or_fail(error) from error


@kopf.on.event(*TR)  # type: ignore[arg-type]
def replica_changed(
    namespace: str,
    memo: kopf.Memo,
    replica_readiness: ReadinessIndex,
    waiting_runs: kopf.Index[str, str],
    **_: Any,
) -> None:
    runtime = _runtime(memo)
    ready = _replicas(replica_readiness, namespace)
    if not runtime.readiness_changed(namespace, ready):
        return
    for name in list(waiting_runs.get(namespace, [])):
        with metrics.measure("SelfCodingRun") as meter:
            # Read the run itself: the decision must rest on its latest phase and spec.
            current = runtime.kube.get(SELF_CODING_RUNS, namespace, name)
            if current is None:
                continue
            try:
                meter.changed(_evaluate_run(runtime, current, ready))
            except ApiError as error:
                if error.status != 409:
                    raise
                log.info(
                    "run %s/%s changed while it was evaluated; its own handler takes over",
                    namespace,
                    name,
                )


# --- SelfCodingRun through the coordinator -----------------------------------------------


def _is_active(status: kopf.Status, **_: Any) -> bool:
    phase = status.get("phase")
    return phase is None or not RunPhase(phase).is_terminal


@kopf.daemon(*SCR, when=_is_active, cancellation_timeout=10.0)  # type: ignore[arg-type]
def drive_run(
    namespace: str,
    name: str,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    replica_readiness: ReadinessIndex,
    **_: Any,
) -> None:
    """Hands the run to a coordinator and mirrors its progress until it ends.

    Started for every active run, also when the operator starts again: it then resumes
    mirroring from the coordinator address and checkpoint kept in `<run>-state`.
    """
    runtime = _runtime(memo)

    def post(target: dict[str, Any], transition: replicas.Transition) -> None:
        _post(target, transition)

    driver = run_driver.RunDriver(runtime.kube, namespace, name, post)
    while not stopped:
        try:
            with metrics.measure("SelfCodingRun"):
                delay = driver.step(_replicas(replica_readiness, namespace))
        except ApiError as error:
            log.warning("run %s/%s: %s", namespace, name, error)
            delay = run_driver.api_error_delay(error)
        except CoordinatorApiError as error:
            log.warning("run %s/%s: %s", namespace, name, error)
            delay = run_driver.WAIT_SECONDS
        if delay is None:
            return
        stopped.wait(delay)


@kopf.on.event(*SCR)  # type: ignore[arg-type]
def run_ended(
    namespace: str,
    name: str,
    status: kopf.Status,
    memo: kopf.Memo,
    replica_readiness: ReadinessIndex,
    **_: Any,
) -> None:
    """A finished run keeps no pod running: its own tester goes (the run still owns it, so
    deleting the run would remove it too)."""
    phase = status.get("phase")
    if phase is None or not RunPhase(phase).is_terminal:
        return
    tester = run_tester(name)
    if not any(
        replica.run == name and replica.name == tester
        for replica in _replicas(replica_readiness, namespace)
    ):
        return
    with metrics.measure("SelfCodingRun") as meter:
        if _runtime(memo).kube.delete(TARS_REPLICAS, namespace, tester):
            meter.changed()
            log.info("run %s/%s has ended: its tester %s deleted", namespace, name, tester)
