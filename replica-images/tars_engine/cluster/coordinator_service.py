"""The coordinator role over HTTP: runs handed over by the operator, one thread each.

The routes and bodies are in `tars_engine.cluster.run_api`. Each run gets a directory under the
scratch dir (`runs/<uid>/`: the source's working copy and the workflow's state). The
worker roles come from `tars_engine.cluster.discovery`: TARS_ENDPOINTS_<ROLE> when set, else the
TarsReplicas and EndpointSlices of the run's namespace, watched, so replicas scaled mid-run
are used at once. A run with a test image is tested only by its own testers (the
TarsReplica labelled with its name, which the operator makes), never by the shared ones.

The pod. Read at start: TARS_SCRATCH_DIR (runs' working copies and state, the learning
store), TARS_VOLUMES (`tars_engine.cluster.sources`), KUBECONFIG (else the in-cluster service
account), TARS_ENDPOINTS_<ROLE> (fixed worker endpoints instead of discovery). The service
account needs, in the runs' namespaces: get configmaps (uploads), get secrets (git
credentials), list and watch tarsreplicas.tars.dev and endpointslices.discovery.k8s.io.
Its /metrics count the requests sent to each worker endpoint
(`tars_coordinator_requests_total{role, endpoint, operation}`).

Resuming. A run assigned with a checkpoint (its coordinator died) continues from it. A
working copy made anew (upload and git sources) first gets the improvements the
checkpoint says were applied, as commits again; the project the run works for is never
changed twice, and the state's record of applied candidates keeps the workflow from
applying them again.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, HTTPException, Response
from kubernetes import client
from kubernetes.config.config_exception import ConfigException
from prometheus_client import Counter
from tars_api.names import ReplicaEnv
from tars_api.run import RunPhase, RunStage, SelfCodingRunSpec, SelfCodingRunStatus
from tars_api.vocabulary import Role

from tars_engine.cluster.discovery import (
    ClusterDiscovery,
    RoleDirectory,
    cluster_api_client,
    static_endpoints,
)
from tars_engine.cluster.run_api import (
    PATCH_MEDIA_TYPE,
    RUNS_PATH,
    RunAssignment,
    RunReport,
    RunResults,
    TestRunsPerChange,
)
from tars_engine.cluster.sources import (
    SourceError,
    Workspace,
    materialise,
    mounted_volumes,
    push_branch,
)
from tars_engine.core import applying
from tars_engine.core.budget import Budget
from tars_engine.core.git import GitError
from tars_engine.core.learning import LEARNING_DB_FILENAME, LearningStore
from tars_engine.core.models import RoleInfo
from tars_engine.core.role_pool import WorkerRoles
from tars_engine.core.settings import ConfigurationError, ReplicaSettings
from tars_engine.core.state import RunOptions, StateError, StateStore, WorkflowState, now
from tars_engine.core.workflow import Workflow
from tars_engine.core.workflow_errors import WorkflowError
from tars_engine.transports.server import RoleService

# Workers per stage when replicas come and go; each waits for an idle replica.
MAX_PARALLEL_PER_ROLE = 8
ROLES_POLL_SECONDS = 1.0
RUNS_DIR = "runs"
STOPPED_BEFORE_START = "stop requested before the run started"


def _preparation_failed(exc: Exception, *, stopped: bool) -> tuple[RunPhase, str]:
    """How a run ends whose preparation raised: a killed git is no failure when stop asked it."""
    if stopped:
        return RunPhase.stopped, STOPPED_BEFORE_START
    if isinstance(exc, SourceError | GitError | WorkflowError | StateError | OSError):
        return RunPhase.failed, str(exc)
    return RunPhase.failed, f"internal error while preparing the run: {type(exc).__name__}: {exc}"


log = logging.getLogger(__name__)


def _own_testers(assignment: RunAssignment) -> str | None:
    """The run whose own testers test it (a run with a test image); None: the shared ones."""
    return assignment.name if assignment.spec.test_image is not None else None


def run_options(spec: SelfCodingRunSpec) -> RunOptions:
    return RunOptions(
        targets=spec.targets,
        auto_apply=spec.auto_apply,
        engine=spec.engine,
        model=spec.model,
        test_command=spec.test_command or None,
        sandbox=spec.sandbox,
        test_env=spec.test_env,
        test_network=spec.test_network,
        test_environment=spec.test_environment,
        learning=spec.learning,
        budget=Budget(
            max_files=spec.max_files,
            max_attempts_per_file=spec.max_attempts_per_file,
            deadline_seconds=spec.deadline_seconds,
            max_tokens=spec.max_tokens,
        ),
    )


def patch_text(state: WorkflowState) -> str:
    """The improvements in effect: all accepted ones, or with auto-apply those applied."""
    applied = {change.candidate_id for change in state.applied}
    return "".join(
        candidate.diff
        for candidate in state.accepted
        if not state.options.auto_apply or candidate.id in applied
    )


def replay_applied(root: Path, checkpoint: WorkflowState) -> WorkflowState:
    """Commit again, in a working copy made anew, what the checkpoint says was applied.

    Improvements the copy already holds (a pushed branch it continues) are only looked up.
    """
    state = checkpoint.model_copy(deep=True)
    accepted = {candidate.id: candidate for candidate in state.accepted}
    present = applying.committed_candidates(root)
    for change in state.applied:
        candidate = accepted.get(change.candidate_id)
        if candidate is None:
            raise WorkflowError(
                f"checkpoint lists {change.candidate_id} as applied but not accepted"
            )
        try:
            change.commit = present.get(candidate.id) or applying.commit_improvement(
                root, candidate, None
            )
        except applying.ApplyError as exc:
            raise WorkflowError(f"cannot restore the applied improvements: {exc}") from exc
        for record in state.files:
            if record.candidate_id == candidate.id or record.path == candidate.path:
                record.commit = change.commit
    return state


@dataclass
class RunHandle:
    """One assigned run and what is known of it outside the workflow."""

    assignment: RunAssignment
    work_dir: Path
    started: datetime.datetime = field(default_factory=now)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    phase: RunPhase = RunPhase.pending
    message: str = "assigned"
    finished: bool = False
    completed: datetime.datetime | None = None
    workflow: Workflow | None = None
    branch: str | None = None
    pushed: bool | None = None

    @property
    def store(self) -> StateStore:
        return StateStore(self.work_dir / "state")

    def checkpoint(self) -> WorkflowState | None:
        workflow = self.workflow
        if workflow is not None:
            # A workflow exists a moment before its run starts; until then the store speaks.
            with contextlib.suppress(WorkflowError):
                return workflow.state
        try:
            return self.store.load() or self.assignment.checkpoint
        except StateError:
            return self.assignment.checkpoint

    def end(self, phase: RunPhase, message: str) -> None:
        with self.lock:
            self.phase = phase
            self.message = message
            self.completed = now()
            self.finished = True

    def report(self) -> RunReport:
        state = self.checkpoint()
        with self.lock:
            if state is not None:
                # Resumed runs report their checkpoint while the source is prepared again.
                status = state.run_status()
                if self.workflow is None:
                    status.phase = self.phase
            else:
                status = SelfCodingRunStatus(
                    phase=self.phase,
                    stage=RunStage.initializing,
                    start_time=self.started.replace(microsecond=0),
                )
            if self.finished:
                status.phase = self.phase
                status.stage = RunStage.done
                status.current_file = None
                if status.completion_time is None and self.completed is not None:
                    status.completion_time = self.completed.replace(microsecond=0)
            status.branch = self.branch
            workflow_speaks = self.workflow is not None and not self.finished
            return RunReport(
                uid=self.assignment.uid,
                status=status,
                message=state.message if workflow_speaks and state is not None else self.message,
                finished=self.finished,
                checkpoint=state,
            )


class Coordinator:
    """Runs assigned over HTTP, each on its own thread, sharing the worker replicas."""

    def __init__(
        self,
        settings: ReplicaSettings,
        *,
        endpoints: dict[Role, list[str]] | None = None,
        api: client.ApiClient | None = None,
        volumes: dict[str, Path] | None = None,
    ) -> None:
        self.settings = settings
        self.runs_dir = settings.scratch_dir / RUNS_DIR
        self.requests_total = Counter(
            "tars_coordinator_requests_total",
            "Requests the coordinator sent to worker replicas, by role, endpoint and operation",
            ["role", "endpoint", "operation"],
            registry=None,
        )
        self._static = endpoints if endpoints is not None else static_endpoints()
        self._api = api
        # Read once: what the pod was started with.
        self._kubeconfig = os.environ.get("KUBECONFIG")
        self._volumes = volumes if volumes is not None else mounted_volumes()
        self._lock = threading.Lock()
        self._runs: dict[str, RunHandle] = {}
        self._directories: dict[str, RoleDirectory] = {}
        # Held while a namespace's discovery starts, so two runs cannot start two.
        self._discovery_lock = threading.Lock()
        self.learning = LearningStore(settings.scratch_dir / LEARNING_DB_FILENAME)
        if self.learning.set_aside is not None:
            log.warning("%s", self.learning.set_aside.warning)

    def _observe(self, role: str, endpoint: str, operation: str) -> None:
        self.requests_total.labels(role, endpoint, operation).inc()

    def info(self) -> RoleInfo:
        return self.settings.role_info(
            Role.coordinator, ["runs", "sources:git,upload,volume", "discovery", "resume", "stop"]
        )

    def api(self) -> client.ApiClient:
        with self._lock:
            if self._api is None:
                try:
                    self._api = cluster_api_client(self._kubeconfig)
                except ConfigException as exc:
                    raise SourceError(f"no Kubernetes API credentials in this pod: {exc}") from exc
            return self._api

    def directory(self, namespace: str) -> RoleDirectory:
        """The worker roles a run in `namespace` uses: the static list, else discovered ones."""
        key = "" if self._static else namespace
        with self._discovery_lock:
            directory = self._directories.get(key)
            if directory is None:
                directory = (
                    RoleDirectory.static(self._static, self._observe)
                    if self._static
                    else ClusterDiscovery(self.api(), namespace, self._observe).start().directory
                )
                self._directories[key] = directory
            return directory

    # -- the API --------------------------------------------------------

    def assign(self, assignment: RunAssignment) -> RunReport:
        with self._lock:
            handle = self._runs.get(assignment.uid)
            if handle is None:
                handle = RunHandle(assignment, self.runs_dir / assignment.uid)
                self._runs[assignment.uid] = handle
                threading.Thread(
                    target=self._run,
                    args=(handle,),
                    name=f"tars-run-{assignment.name}",
                    daemon=True,
                ).start()
            if assignment.spec.stop:
                handle.stop.set()
        return handle.report()

    def handle(self, uid: str) -> RunHandle:
        with self._lock:
            handle = self._runs.get(uid)
        if handle is None:
            raise KeyError(uid)
        return handle

    def stop(self, uid: str) -> RunReport:
        handle = self.handle(uid)
        handle.stop.set()
        return handle.report()

    def patch(self, uid: str) -> str:
        state = self.handle(uid).checkpoint()
        return patch_text(state) if state is not None else ""

    def results(self, uid: str) -> RunResults:
        handle = self.handle(uid)
        report = handle.report()
        state = report.checkpoint
        statistics = report.status.statistics
        return RunResults(
            uid=uid,
            name=handle.assignment.name,
            phase=report.status.phase,
            message=report.message,
            branch=handle.branch,
            pushed=handle.pushed,
            statistics=statistics,
            files=state.files if state else [],
            skipped=state.skipped if state else [],
            test_runs_per_change=TestRunsPerChange(
                test_runs=statistics.test_runs,
                accepted_changes=len(state.accepted) if state else 0,
            ),
        )

    # -- one run --------------------------------------------------------

    def _run(self, handle: RunHandle) -> None:
        try:
            self._run_to_end(handle)
        finally:
            own_testers = _own_testers(handle.assignment)
            with self._discovery_lock:
                directory = self._directories.get(handle.assignment.namespace)
            if own_testers is not None and directory is not None:
                directory.forget_run(own_testers)

    def _run_to_end(self, handle: RunHandle) -> None:
        assignment = handle.assignment
        checkpoint = assignment.checkpoint
        if checkpoint is not None and checkpoint.phase.is_terminal:
            handle.end(checkpoint.phase, checkpoint.message)
            return
        with handle.lock:
            handle.phase = RunPhase.running
            handle.message = "preparing the source"
        try:
            workspace = self._workspace(handle)
            directory = None if handle.stop.is_set() else self._wait_for_roles(handle)
            if directory is None:
                handle.end(RunPhase.stopped, STOPPED_BEFORE_START)
                return
            workflow = self._workflow(handle, workspace, directory)
        except Exception as exc:  # noqa: BLE001 - whatever it was, the run must end
            handle.end(*_preparation_failed(exc, stopped=handle.stop.is_set()))
            return
        with handle.lock:
            handle.workflow = workflow
        try:
            state = workflow.run()
        except Exception as exc:  # noqa: BLE001 - the workflow recorded it; the run must end
            handle.end(RunPhase.failed, f"internal error: {type(exc).__name__}: {exc}")
            return
        message = state.message
        if workspace.branch is not None and state.applied:
            problem = push_branch(workspace)
            handle.pushed = problem is None
            message += (
                f"; pushed {workspace.branch}"
                if problem is None
                else f"; {workspace.branch} not pushed: {problem}"
            )
        handle.end(state.phase, message)

    def _workspace(self, handle: RunHandle) -> Workspace:
        assignment = handle.assignment
        source = assignment.spec.source
        workspace = materialise(
            source,
            namespace=assignment.namespace,
            run_name=assignment.name,
            auto_apply=assignment.spec.auto_apply,
            work_dir=handle.work_dir,
            api=self.api,
            volumes=self._volumes,
            limits=self.settings.archive_limits,
            git_timeout_seconds=self.settings.git_timeout_seconds,
            stop=handle.stop,
        )
        with handle.lock:
            handle.branch = workspace.branch
        return workspace

    def _wait_for_roles(self, handle: RunHandle) -> RoleDirectory | None:
        """The namespace's worker roles once each has a ready endpoint; None when stopped first."""
        assignment = handle.assignment
        own_testers = _own_testers(assignment)
        if own_testers is not None and self._static:
            raise WorkflowError(
                "spec.testEnvironment.image needs the run's own tester, found by discovery; "
                f"this coordinator has fixed endpoints ({ReplicaEnv.endpoints_prefix}<ROLE>)"
            )
        directory = self.directory(assignment.namespace)
        deadline = handle.started + datetime.timedelta(seconds=assignment.spec.deadline_seconds)
        while missing := directory.wait_for_roles(ROLES_POLL_SECONDS, own_testers):
            if handle.stop.is_set():
                return None
            names = ", ".join(
                f"{role.value} (the run's own)"
                if role is Role.tester and own_testers is not None
                else role.value
                for role in missing
            )
            if now() >= deadline:
                raise WorkflowError(f"no ready {names} replicas before the deadline")
            with handle.lock:
                handle.message = f"waiting for ready {names} replicas"
        return directory

    def _workflow(
        self, handle: RunHandle, workspace: Workspace, directory: RoleDirectory
    ) -> Workflow:
        store = handle.store
        checkpoint = handle.assignment.checkpoint
        on_disk = store.load()
        if checkpoint is not None and (
            on_disk is None or on_disk.updated_at < checkpoint.updated_at
        ):
            moved = checkpoint.model_copy(update={"project_root": str(workspace.root.resolve())})
            store.save(replay_applied(workspace.root, moved) if workspace.fresh else moved)
        roles = WorkerRoles(
            analyzers=directory.analyzers.ready,
            generators=directory.generators.ready,
            testers=directory.testers_for(_own_testers(handle.assignment)).ready,
            max_parallel=MAX_PARALLEL_PER_ROLE,
        )
        return Workflow(
            workspace.root,
            run_options(handle.assignment.spec),
            roles,
            store=store,
            learning=self.learning,
            stop_requested=handle.stop.is_set,
        )


def router_for(coordinator: Coordinator) -> APIRouter:
    router = APIRouter(tags=["coordinator"])

    def known(uid: str) -> RunHandle:
        try:
            return coordinator.handle(uid)
        except KeyError as exc:
            raise HTTPException(
                status_code=404, detail=f"no run {uid} on this coordinator"
            ) from exc

    @router.post(RUNS_PATH, name="assign_run", status_code=202)
    def assign_run(assignment: RunAssignment) -> RunReport:
        return coordinator.assign(assignment)

    @router.get(RUNS_PATH + "/{uid}", name="run_report")
    def run_report(uid: str) -> RunReport:
        return known(uid).report()

    @router.post(RUNS_PATH + "/{uid}/stop", name="stop_run")
    def stop_run(uid: str) -> RunReport:
        known(uid)
        return coordinator.stop(uid)

    @router.get(RUNS_PATH + "/{uid}/patch", name="run_patch")
    def run_patch(uid: str) -> Response:
        known(uid)
        return Response(coordinator.patch(uid), media_type=PATCH_MEDIA_TYPE)

    @router.get(RUNS_PATH + "/{uid}/report", name="run_results")
    def run_results(uid: str) -> RunResults:
        known(uid)
        return coordinator.results(uid)

    return router


def service(settings: ReplicaSettings, coordinator: Coordinator | None = None) -> RoleService:
    if coordinator is None:
        try:
            coordinator = Coordinator(settings)
        except SourceError as exc:
            raise ConfigurationError(str(exc)) from exc
    return RoleService(
        router=router_for(coordinator), info=coordinator.info, metrics=(coordinator.requests_total,)
    )
