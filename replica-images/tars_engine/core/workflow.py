"""The coordinator's workflow: select, analyze, generate, test, apply, learn.

The workflow reaches the roles only through the interfaces in `tars_engine.core.role_set`;
whether a role runs in this process or behind HTTP is not its concern, and how its
work is spread over a role's instances is `tars_engine.core.role_pool`'s. Which
candidates pass the project's tests is decided by `tars_engine.core.gating`.

State. Every step is persisted (see `tars_engine.core.journal`); a run that was
stopped, or whose process died, resumes where it left off, and an improvement is never
applied twice: applied candidates are recorded in the state and, with auto-apply,
in a trailer of their commit. A candidate is saved as accepted before its file or the
patch changes, so a resumed run finishes applying whatever a crash interrupted
(`_recover`), and with auto-apply it leaves alone, uncommitted, a file edited since the
run selected it. `tars_engine.core.crash_points` names the step boundaries a test kills
a run at to prove it.

The static engine's work on a file goes in levels, safe fixes first: only once every
file's safe fixes are settled are unsafe ones (when allowed) tried, on top of what passed,
so a run that allows more accepts at least what a narrower run accepts. Within a level,
a change that fails its tests has its rules bisected (`gating.next_rule_groups`): each
group of rules is a candidate of its own, what passes is accepted at once, and the
culprits are left out, each named with why on the file's record. The bisection's place
is saved with the file, so a stopped run goes on from there; a step a crash interrupts
is tried again.
"""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import Callable
from pathlib import Path

from tars_api.run import FileOutcome, RunPhase, RunStage
from tars_api.vocabulary import EngineName

from tars_engine.core import applying, crash_points
from tars_engine.core.budget import BudgetGuard, StopRequested, call_until_stop
from tars_engine.core.diffs import apply_unified_diff
from tars_engine.core.events import EventCallback, EventKind, one_line
from tars_engine.core.gating import CandidateGate, GateHooks, describe_failure, next_rule_groups
from tars_engine.core.journal import RunJournal
from tars_engine.core.learning import LearningStore, Outcome
from tars_engine.core.models import (
    AnalysisReport,
    AnalyzeRequest,
    Candidate,
    DropCause,
    DroppedRule,
    EnvironmentUse,
    Finding,
    GenerateRequest,
    GenerateResult,
    ModelCheckRequest,
    SourceFile,
    TestResult,
)
from tars_engine.core.role_pool import RolePool, WorkerRoles
from tars_engine.core.role_set import RoleError
from tars_engine.core.ruff_config import lint_context
from tars_engine.core.selection import (
    UNCOMMITTED_DETAIL,
    SelectionError,
    SkippedFile,
    SkipReason,
    actionable_findings,
    is_git_repository,
    prioritize,
    resolve_targets,
    select_files,
    uncommitted_files,
)
from tars_engine.core.snapshot import SnapshotError, pack_project
from tars_engine.core.state import (
    AppliedChange,
    FileRecord,
    RuleGroup,
    RunOptions,
    StateStore,
    WorkflowState,
    now,
)
from tars_engine.core.validation import candidate_rejection
from tars_engine.core.workflow_errors import WorkflowError

FEEDBACK_OUTPUT_CHARS = 4000
ADDED_TO_PATCH = "passed the tests; added to the patch"
EXAMPLES_PER_REQUEST = 3


def counted(count: int, noun: str) -> str:
    """`1 file`, `2 files`: the summary is read as a sentence."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _tells_more(latest: EnvironmentUse | None, known: EnvironmentUse | None) -> bool:
    """Whether the status should show `latest`: the run's virtualenv is shown as it was first
    made or found (later test runs reuse it), unless a setup failed or it changed."""
    if latest is None:
        return False
    return known is None or latest.failed or latest.digest != known.digest


class Workflow:
    """One run of the workflow over a project; `run()` drives it to the end or a stop."""

    def __init__(
        self,
        project_root: Path,
        options: RunOptions,
        roles: WorkerRoles,
        *,
        store: StateStore,
        learning: LearningStore | None,
        on_event: EventCallback | None = None,
        stop_requested: Callable[[], bool] | None = None,
    ) -> None:
        self.root = project_root.resolve()
        if not self.root.is_dir():
            raise WorkflowError(f"project {project_root} is not a directory")
        try:
            targets = resolve_targets(self.root, options.targets)
        except SelectionError as exc:
            raise WorkflowError(str(exc)) from exc
        self.options = options.model_copy(update={"targets": targets})
        self.git = is_git_repository(self.root)
        if self.options.auto_apply and not self.git:
            raise WorkflowError(
                f"auto-apply refused: {self.root} is not a git repository, so an applied change "
                "could not be reviewed or undone; run without auto-apply to get a patch instead"
            )
        crash_points.kill_point()
        self.store = store
        if self.options.learning and learning is None:
            raise ValueError("a run that learns needs a learning store")
        # Off, the run neither reads nor writes the store: None keeps it out of reach.
        self.learning = learning if self.options.learning else None
        self._stop_requested = stop_requested
        self._analyzers = RolePool(roles.analyzers, roles.max_parallel)
        self._generators = RolePool(roles.generators, roles.max_parallel)
        self._testers = RolePool(roles.testers, roles.max_parallel)
        self._journal = RunJournal(store, on_event, self._tokens_used)
        self._feedback: dict[str, str] = {}
        # Per file: diffs that failed their tests, and why.
        self._failed_diffs: dict[str, dict[str, str]] = {}
        self._reports: dict[str, AnalysisReport] = {}
        self._guard: BudgetGuard | None = None

    # -- state ------------------------------------------------------------

    @property
    def state(self) -> WorkflowState:
        """A copy of the current state, safe to read from any thread."""
        return self._journal.copy()

    @property
    def _s(self) -> WorkflowState:
        return self._journal.state

    def _tokens_used(self) -> int | None:
        return self._guard.tokens_used if self._guard is not None else None

    def _check(self) -> None:
        assert self._guard is not None
        self._guard.check()

    # -- the run ----------------------------------------------------------

    def _load_or_start(self) -> WorkflowState:
        previous = self.store.load()
        if (
            previous is not None
            and previous.phase is not RunPhase.succeeded
            and previous.project_root == str(self.root)
            and previous.options.targets == self.options.targets
            and previous.options.auto_apply == self.options.auto_apply
            and (previous.baseline is None or previous.baseline.passed)
        ):
            previous.phase = RunPhase.running
            previous.options = self.options
            previous.completed_at = None
            previous.message = "resumed"
            return previous
        started = now()
        return WorkflowState(
            run_id=f"{started:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}",
            project_root=str(self.root),
            options=self.options,
            phase=RunPhase.running,
            started_at=started,
            updated_at=started,
        )

    def run(self) -> WorkflowState:
        """Run to the end, a stop or a failure; the returned state says which."""
        with self.store.exclusive():
            self._journal.begin(self._load_or_start())
            self.store.clear_stop()
            self._guard = BudgetGuard(
                self._s.options.budget, self.store.stop_file, self._stop_requested
            )
            self._journal.commit(EventKind.started, message=self._s.message)
            executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._testers.parallelism, thread_name_prefix="tars-baseline"
            )
            try:
                self._execute(executor)
                self._end(RunPhase.succeeded, self._summary())
            except StopRequested as stop:
                self._end(RunPhase.failed if stop.failed else RunPhase.stopped, stop.reason)
            except (WorkflowError, RoleError, applying.ApplyError, SnapshotError, OSError) as exc:
                self._end(RunPhase.failed, str(exc))
            except BaseException as exc:
                self._end(RunPhase.failed, f"internal error: {type(exc).__name__}: {exc}")
                raise
            finally:
                executor.shutdown(wait=True, cancel_futures=True)
            return self.state

    def _end(self, phase: RunPhase, message: str) -> None:
        with self._journal.lock:
            state = self._s
            state.phase = phase
            state.stage = RunStage.done
            state.current_file = None
            state.message = one_line(message)
            state.completed_at = now()
        self._journal.commit(EventKind.finished, message=self._s.message)

    def _summary(self) -> str:
        statistics = self._s.statistics
        verb = "applied" if self._s.options.auto_apply else "accepted"
        count = (
            statistics.improvements_applied
            if self._s.options.auto_apply
            else statistics.improvements_accepted
        )
        per_change = (
            f" ({statistics.test_runs / statistics.improvements_accepted:.2f} per accepted change)"
            if statistics.improvements_accepted
            else ""
        )
        left_out = sum(len(record.dropped_rules) for record in self._s.files)
        return (
            f"{counted(count, 'improvement')} {verb} in "
            f"{counted(statistics.files_processed, 'file')}, "
            f"{counted(statistics.test_runs, 'test run')}{per_change}"
            + (f", {counted(left_out, 'rule')} left out" if left_out else "")
            + ("" if self._s.options.learning else "; learning off")
        )

    def _execute(self, executor: concurrent.futures.ThreadPoolExecutor) -> None:
        guard = self._guard
        assert guard is not None
        resumed = bool(self._s.files)
        if not resumed:
            self._journal.enter(RunStage.scanning)
            selection = select_files(
                self.root, self._s.options.targets, refuse_dirty=self._s.options.auto_apply
            )
            with self._journal.lock:
                self._s.skipped = list(selection.skipped)
            self._journal.commit(EventKind.stage, message=f"{len(selection.files)} files selected")
            candidates_paths = selection.files
        else:
            self._recover()
            candidates_paths = [r.path for r in self._s.files if r.outcome is None]
        guard.check()
        if self._s.options.engine is EngineName.ollama:
            self._check_model()
        gate = self._open_gate(guard)
        gate.start_baseline(executor)
        self._journal.enter(RunStage.analyzing)
        self._reports = self._analyze(candidates_paths)
        if not resumed:
            self._choose_files(self._reports)
        else:
            for record in self._s.files:
                if record.outcome is None and not self._actionable(record.path):
                    self._finish(record, "nothing left to improve")
        while True:
            pending = [r for r in self._s.files if r.outcome is None]
            if not pending:
                break
            # Every file's safe fixes are settled before any unsafe fix is tried.
            pending = [r for r in pending if not r.unsafe_fixes] or pending
            guard.check()
            self._journal.enter(RunStage.generating)
            candidates = self._generate(pending)
            guard.check()
            if candidates:
                self._journal.enter(RunStage.testing)
                gate.test_in_batches(candidates)
        gate.require_baseline(run_if_missing=False)
        self._journal.enter(RunStage.learning)

    def _check_model(self) -> None:
        """Before any work: the model server answers and has the model, or the run fails."""
        model = self._s.options.model
        with self._generators.lease(self._check) as generator:
            check = generator.check_model(ModelCheckRequest(model=model))
        with self._journal.lock:
            self._s.model_check = check
        if check.problem:
            raise WorkflowError(check.problem)
        self._journal.commit(
            EventKind.stage,
            message=f"model {model}: context {check.num_ctx} of {check.context_length} tokens, "
            f"{check.tokens_per_second} tokens/s",
        )

    # -- resume -----------------------------------------------------------

    def _recover(self) -> None:
        """On resume: finish what was accepted before the stop or crash, then keep out of
        the way of files the user changed meanwhile."""
        committed = applying.committed_candidates(self.root) if self.git else {}
        accepted = {candidate.id: candidate for candidate in self._s.accepted}
        auto_apply = self._s.options.auto_apply
        if not auto_apply and (accepted or self._patch_file().exists()):
            # A crash after writing the patch but before saving the state left in it a
            # candidate the state does not know; the patch holds what the state accepted.
            self._write_patch()
        for record in self._s.files:
            candidate_id = record.candidate_id
            if record.outcome is not None or candidate_id is None:
                continue
            if candidate_id in committed:
                self._record_applied(record, candidate_id, committed[candidate_id])
                self._settle(record, "applied (recovered from its commit)", changed=True)
            elif candidate_id in accepted and auto_apply:
                self._apply(accepted[candidate_id], None)
            elif candidate_id in accepted:
                self._settle(record, ADDED_TO_PATCH, changed=True)
        if auto_apply:
            # What was selected clean may have been edited since: committing it would
            # sweep the user's edit into an improvement's commit.
            uncommitted = uncommitted_files(self.root)
            for record in self._s.files:
                if record.outcome is None and record.path in uncommitted:
                    self._journal.finish_file(record, FileOutcome.skipped, UNCOMMITTED_DETAIL)

    # -- analyze ----------------------------------------------------------

    def _actionable(self, path: str, *, unsafe: bool | None = None) -> list[Finding]:
        """What the generator may act on in `path`; `unsafe`: at that level, not the run's."""
        report = self._reports.get(path)
        if report is None or report.error is not None:
            return []
        options = self._s.options
        allow_unsafe = options.allow_unsafe_fixes if unsafe is None else unsafe
        return actionable_findings(report, options.engine, allow_unsafe)

    def _analyze_one(self, path: str) -> AnalysisReport:
        assert self._guard is not None
        self._guard.check()
        self._journal.set_current(path)
        try:
            content = applying.read_source(self.root, path)
        except (OSError, UnicodeDecodeError) as exc:
            return AnalysisReport(path=path, findings=[], priority=0, error=f"unreadable: {exc}")
        options = self._s.options
        request_id = uuid.uuid4().hex
        request = AnalyzeRequest(
            file=SourceFile(path=path, content=content, lint=lint_context(self.root, path)),
            engine=options.engine,
            model=options.model,
            request_id=request_id,
        )
        with self._analyzers.lease(self._check) as analyzer:
            report = call_until_stop(
                lambda: analyzer.analyze(request),
                self._guard,
                lambda: analyzer.cancel_analysis(request_id),
                name="tars-analyze",
            )
        self._guard.add_tokens(report.tokens_used)
        return report

    def _analyze(self, paths: list[str]) -> dict[str, AnalysisReport]:
        reports: dict[str, AnalysisReport] = {}
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=self._analyzers.parallelism, thread_name_prefix="tars-analyze"
        ) as pool:
            futures = {pool.submit(self._analyze_one, path): path for path in paths}
            for future in concurrent.futures.as_completed(futures):
                reports[futures[future]] = future.result()
        with self._journal.lock:
            self._s.current_file = None
        return {path: reports[path] for path in paths}

    def _choose_files(self, reports: dict[str, AnalysisReport]) -> None:
        options = self._s.options
        unanalysable = [
            SkippedFile(path=path, reason=SkipReason.unanalysable, detail=report.error or "")
            for path, report in reports.items()
            if report.error is not None
        ]
        actionable = {path: self._actionable(path) for path in reports}
        boosts: dict[str, float] = {}
        if self.learning is not None:
            records = self.learning.rule_records(options.engine)
            own_history = self.learning.file_records(str(self.root))
            boosts = {
                path: self.learning.priority_boost(findings, records, own_history.get(path))
                for path, findings in actionable.items()
            }
        workable = {path: reports[path] for path, findings in actionable.items() if findings}
        ordered = prioritize(workable, boosts)
        if options.budget.max_files is not None:
            ordered = ordered[: options.budget.max_files]
        with self._journal.lock:
            self._s.skipped.extend(unanalysable)
            self._s.files = [
                FileRecord(
                    path=path,
                    priority=round(workable[path].priority + boosts.get(path, 0.0), 3),
                    rules=sorted({finding.rule for finding in actionable[path]}),
                )
                for path in ordered
            ]
        self._journal.commit(EventKind.stage, message=f"{len(ordered)} files to improve")

    # -- generate ---------------------------------------------------------

    @property
    def _static(self) -> bool:
        return self._s.options.engine is not EngineName.ollama

    def _content(self, path: str) -> str:
        """The file as the next change to it starts from: on disk, and without auto-apply
        with the changes to it this run accepted on top, in order."""
        content = applying.read_source(self.root, path)
        if not self._s.options.auto_apply:
            for candidate in self._s.accepted:
                if candidate.path == path:
                    content = apply_unified_diff(content, candidate.diff, path)
        return content

    def _level_rules(self, record: FileRecord) -> list[str]:
        """The rules the static engine may fix in `record`'s file at its current level."""
        findings = self._actionable(record.path, unsafe=record.unsafe_fixes)
        return sorted({finding.rule for finding in findings})

    def _generate_one(self, record: FileRecord) -> Candidate | None:
        options = self._s.options
        guard = self._guard
        assert guard is not None
        guard.check()
        self._journal.set_current(record.path)
        unsafe = record.unsafe_fixes if self._static else options.allow_unsafe_fixes
        findings = self._actionable(record.path, unsafe=unsafe)
        try:
            content = self._content(record.path)
        except (OSError, UnicodeDecodeError) as exc:
            self._journal.finish_file(record, FileOutcome.failed, f"unreadable: {exc}")
            return None
        # Any engine's accepted change shows the model what passes this project's bar.
        examples = (
            self.learning.examples([f.rule for f in findings], limit=EXAMPLES_PER_REQUEST)
            if options.engine is EngineName.ollama and self.learning is not None
            else []
        )
        remaining_tokens = (
            max(options.budget.max_tokens - guard.tokens_used, 1)
            if options.budget.max_tokens
            else None
        )
        with self._journal.lock:
            record.attempts += 1
            attempt = record.attempts
        request_id = uuid.uuid4().hex
        request = GenerateRequest(
            file=SourceFile(
                path=record.path, content=content, lint=lint_context(self.root, record.path)
            ),
            findings=findings,
            targets=options.targets,
            engine=options.engine,
            model=options.model,
            allow_unsafe_fixes=unsafe,
            rules=record.rule_groups[0].rules if self._static and record.rule_groups else None,
            examples=examples,
            attempt=attempt,
            feedback=self._feedback.get(record.path),
            max_tokens=remaining_tokens,
            request_id=request_id,
        )
        try:
            with self._generators.lease(self._check) as generator:
                result = call_until_stop(
                    lambda: generator.generate(request),
                    guard,
                    lambda: generator.cancel_generation(request_id),
                    name="tars-generate",
                )
        except RoleError as exc:
            self._journal.finish_file(record, FileOutcome.failed, f"generator failed: {exc}")
            return None
        guard.add_tokens(result.tokens_used)
        self._note_dropped(record, result)
        if result.candidate is None:
            self._no_candidate(record, findings, result.rejection or "no change proposed")
            return None
        earlier_failure = self._failed_diffs.get(record.path, {}).get(result.candidate.diff)
        if earlier_failure is not None and self._static:
            # A deterministic change that failed before fails again: no test needed.
            failure = f"{earlier_failure} (the same change as before)"
            self._rules_tried(record, result.candidate, failure)
            self._settle(record, failure, changed=False)
            return None
        problem = self._unsafe_candidate(result.candidate, record.path, content)
        if problem is not None:
            self._no_candidate(record, findings, problem)
            return None
        with self._journal.lock:
            self._s.statistics.improvements_proposed += 1
            record.candidate_id = result.candidate.id
            record.rules = list(result.candidate.rules)
        self._journal.commit(EventKind.file, path=record.path)
        return result.candidate

    def _note_dropped(self, record: FileRecord, result: GenerateResult) -> None:
        """Rules the generator left out: named on the file's record, and learned, once."""
        known = {drop.rule for drop in record.dropped_rules}
        new = [drop for drop in result.dropped_rules if drop.rule not in known]
        if not new:
            return
        with self._journal.lock:
            record.dropped_rules.extend(new)
        for drop in new:
            self._learn_rule(record, drop.rule, drop.reason, dropped=True)

    def _learn_rule(
        self,
        record: FileRecord,
        rule: str,
        reason: str,
        *,
        dropped: bool = False,
        tests_passed: bool | None = None,
    ) -> None:
        """Learn that `rule` was left out of `record`'s file's changes, and why."""
        options = self._s.options
        kinds = {finding.rule: finding.kind for finding in self._actionable(record.path)}
        self._learn(
            Outcome(
                run_id=self._s.run_id,
                project=str(self.root),
                path=record.path,
                rules=[rule],
                kinds=[kinds[rule]] if rule in kinds else [],
                engine=options.engine,
                model=options.model if options.engine is EngineName.ollama else None,
                accepted=False,
                rejection=reason,
                dropped=dropped,
                tests_passed=tests_passed,
            )
        )

    def _unsafe_candidate(self, candidate: Candidate, path: str, content: str) -> str | None:
        """Why a candidate must not go further, re-checked here whatever the generator did."""
        if candidate.path != path:
            return f"candidate is for {candidate.path}, not {path}"
        rejection = candidate_rejection(
            candidate, SourceFile(path=path, content=content), self._s.options.targets
        )
        earlier_failure = self._failed_diffs.get(path, {}).get(candidate.diff)
        if rejection is None and earlier_failure is not None:
            return f"{earlier_failure} (the retry proposed the same change)"
        return rejection

    def _no_candidate(self, record: FileRecord, findings: list[Finding], reason: str) -> None:
        options = self._s.options
        self._learn(
            Outcome(
                run_id=self._s.run_id,
                project=str(self.root),
                path=record.path,
                rules=sorted({f.rule for f in findings}),
                kinds=sorted({f.kind for f in findings}),
                engine=options.engine,
                model=options.model if options.engine is EngineName.ollama else None,
                accepted=False,
                rejection=one_line(reason, 500),
            )
        )
        if self._static:
            with self._journal.lock:
                record.rule_groups, _ = next_rule_groups(record.rule_groups, None, [])
            self._settle(record, reason, changed=False)
            return
        # A deterministic engine answers the same again; a model may do better with feedback.
        if record.attempts < options.budget.max_attempts_per_file:
            self._feedback[record.path] = f"The previous answer was refused: {reason}"
            return
        outcome = (
            FileOutcome.skipped
            if record.attempts == 1 and not self._feedback.get(record.path)
            else FileOutcome.rejected
        )
        self._journal.finish_file(record, outcome, reason)

    def _rules_tried(self, record: FileRecord, candidate: Candidate, failure: str | None) -> None:
        """The next rule groups of `record` once `candidate` (of its first group) passed its
        tests (`failure` None) or failed them; the culprits found are left out, and learned."""
        group = record.rule_groups[0].rules if record.rule_groups else None
        asked = set(group) if group is not None else set(self._level_rules(record))
        fixed = [rule for rule in candidate.rules if rule in asked]
        with self._journal.lock:
            record.rule_groups, culprits = next_rule_groups(
                record.rule_groups, failure is None, fixed
            )
            if failure is None:
                # A rule left out for its follow-ups, now fixed with them, is in the change.
                record.dropped_rules = [d for d in record.dropped_rules if d.rule not in fixed]
            record.dropped_rules.extend(
                DroppedRule(
                    rule=rule,
                    cause=DropCause.tests_failed,
                    reason=one_line(
                        f"the tests fail with its fix: {failure}"
                        if failure is not None and fixed == [rule]
                        else "the tests fail with its fix (bisecting the file's rules "
                        "found it without a test of its own)",
                        500,
                    ),
                )
                for rule in culprits
            )
            self._next_level(record)
        if failure is None or fixed != culprits:
            # A culprit that failed alone was learned with its candidate; the others are
            # learned here, as failed for this file.
            for rule in culprits:
                self._learn_rule(
                    record,
                    rule,
                    "the tests fail with its fix (found by bisecting the rules)",
                    tests_passed=False,
                )

    def _next_level(self, record: FileRecord) -> None:
        """Once a file's safe fixes are settled, its unsafe ones, when the run allows them,
        without the rules whose fixes failed the tests."""
        if record.rule_groups or record.unsafe_fixes or not self._s.options.allow_unsafe_fixes:
            return
        record.unsafe_fixes = True
        failed = {d.rule for d in record.dropped_rules if d.cause is DropCause.tests_failed}
        rules = [rule for rule in self._level_rules(record) if rule not in failed]
        record.rule_groups = [RuleGroup(rules=rules)] if rules else []

    def _work_left(self, record: FileRecord) -> bool:
        return self._static and bool(record.rule_groups)

    def _settle(self, record: FileRecord, message: str, *, changed: bool) -> None:
        """After a step on `record` (`changed`: it accepted a change): the file goes on while
        its rules are being worked through, else it is finished with how its changes fared."""
        if not self._work_left(record):
            with self._journal.lock:
                self._next_level(record)
        if self._work_left(record):
            with self._journal.lock:
                record.candidate_id = None
                if changed:
                    record.message = message
            self._journal.commit(EventKind.file, path=record.path, message=message)
            return
        self._finish(record, message, changed=changed)

    def _finish(self, record: FileRecord, message: str, *, changed: bool = False) -> None:
        # Applied without being known as accepted: recovered from its commit after a crash.
        paths = {c.path for c in self._s.accepted} | {c.path for c in self._s.applied}
        if record.path in paths:
            outcome = FileOutcome.applied if self._s.options.auto_apply else FileOutcome.accepted
            if not changed and record.message:
                # What the file's last accepted change said, not why a later step made none.
                message = record.message
        elif any(d.cause is DropCause.tests_failed for d in record.dropped_rules):
            outcome = FileOutcome.rejected
        else:
            outcome = FileOutcome.skipped
        if record.dropped_rules:
            message += "; left out: " + ", ".join(
                f"{drop.rule} ({drop.cause.value})" for drop in record.dropped_rules
            )
        self._journal.finish_file(record, outcome, message)

    def _generate(self, records: list[FileRecord]) -> list[Candidate]:
        candidates: dict[str, Candidate] = {}
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=self._generators.parallelism, thread_name_prefix="tars-generate"
        ) as pool:
            futures = {pool.submit(self._generate_one, record): record.path for record in records}
            for future in concurrent.futures.as_completed(futures):
                candidate = future.result()
                if candidate is not None:
                    candidates[futures[future]] = candidate
        # Priority order: when a batch is cut, the most valuable changes are tested first.
        return [candidates[r.path] for r in records if r.path in candidates]

    # -- test -------------------------------------------------------------

    def _open_gate(self, guard: BudgetGuard) -> CandidateGate:
        """A gate over a snapshot of the project as it is now."""
        archive = pack_project(self.root)
        # What the snapshot already holds need not be layered on top of it again.
        in_snapshot = {change.candidate_id for change in self._s.applied}
        hooks = GateHooks(
            proven=lambda: [c for c in self._in_effect() if c.id not in in_snapshot],
            testing=lambda: self._journal.enter(RunStage.testing),
            tested=self._tested,
            baseline=self._record_baseline,
            accept=self._accept,
            reject=self._reject,
        )
        return CandidateGate(
            self._s.run_id,
            archive,
            self._testers,
            self._s.options,
            guard,
            hooks,
            baseline=self._s.baseline,
        )

    def _in_effect(self) -> list[Candidate]:
        """The accepted candidates the project holds: with auto-apply, those applied."""
        if not self._s.options.auto_apply:
            return list(self._s.accepted)
        return [c for c in self._s.accepted if self._s.is_applied(c.id)]

    def _tested(self, message: str, result: TestResult) -> None:
        with self._journal.lock:
            self._s.statistics.test_runs += 1
            self._s.sandbox = result.sandbox or self._s.sandbox
            if _tells_more(result.environment, self._s.environment):
                self._s.environment = result.environment
        self._journal.commit(EventKind.tested, message=message)

    def _record_baseline(self, result: TestResult) -> None:
        with self._journal.lock:
            self._s.baseline = result
        self._journal.commit(EventKind.tested)

    # -- apply and learn --------------------------------------------------

    def _learn(self, outcome: Outcome) -> None:
        if self.learning is not None:
            self.learning.record(outcome)

    def _accept(self, candidate: Candidate, result: TestResult) -> None:
        record = self._s.file(candidate.path)
        self._journal.enter(RunStage.applying)
        with self._journal.lock:
            self._s.accepted.append(candidate)
        if self._static:
            # Saved with the acceptance: a resumed run goes on with the rules after it.
            self._rules_tried(record, candidate, None)
        self._learn(
            Outcome.of_candidate(
                self._s.run_id, str(self.root), candidate, accepted=True, tests_passed=True
            )
        )
        # Saved before the project or the patch changes: a run that dies from here on
        # finds the candidate accepted when it resumes, and finishes applying it.
        self._journal.commit(EventKind.file, path=candidate.path)
        if self._s.options.auto_apply:
            self._apply(candidate, result)
            return
        self._write_patch()
        self._settle(record, ADDED_TO_PATCH, changed=True)

    def _write_patch(self) -> None:
        with self._journal.lock:
            self._s.patch_path = str(applying.write_patch(self._patch_file(), self._s.accepted))

    def _patch_file(self) -> Path:
        return self.store.state_dir / "patches" / f"{self._s.run_id}.patch"

    def _apply(self, candidate: Candidate, result: TestResult | None) -> None:
        record = self._s.file(candidate.path)
        if self._s.is_applied(candidate.id):
            return
        try:
            commit = applying.commit_improvement(self.root, candidate, result)
        except applying.ApplyError as exc:
            self._journal.finish_file(record, FileOutcome.failed, str(exc))
            return
        self._record_applied(record, candidate.id, commit)
        self._settle(record, f"committed {commit[:12]}", changed=True)

    def _record_applied(self, record: FileRecord, candidate_id: str, commit: str) -> None:
        accepted = next((c for c in self._s.accepted if c.id == candidate_id), None)
        with self._journal.lock:
            self._s.applied.append(
                AppliedChange(
                    candidate_id=candidate_id,
                    path=record.path,
                    diff_sha256=applying.sha256_hex(accepted.diff.encode()) if accepted else "",
                    commit=commit,
                )
            )
            record.commit = commit

    def _reject(self, candidate: Candidate, result: TestResult) -> None:
        record = self._s.file(candidate.path)
        reason = describe_failure(result)
        self._learn(
            Outcome.of_candidate(
                self._s.run_id,
                str(self.root),
                candidate,
                accepted=False,
                rejection=reason,
                tests_passed=False,
            )
        )
        with self._journal.lock:
            self._failed_diffs.setdefault(candidate.path, {})[candidate.diff] = reason
            record.candidate_id = None
        if self._static:
            self._rules_tried(record, candidate, reason)
            going_on = "; trying its rules apart" if self._work_left(record) else ""
            self._settle(record, reason + going_on, changed=False)
            return
        with self._journal.lock:
            self._feedback[candidate.path] = (
                f"The previous change failed the project's tests ({reason}). Test output:\n"
                + result.output[-FEEDBACK_OUTPUT_CHARS:]
            )
        if record.attempts >= self._s.options.budget.max_attempts_per_file:
            self._journal.finish_file(record, FileOutcome.rejected, reason)
        else:
            self._journal.commit(EventKind.file, path=record.path, message=f"{reason}; retrying")
