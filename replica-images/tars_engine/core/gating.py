"""Test gating: which candidates the project's tests prove, tested on the run's testers.

Candidates are tested in batches, all of a batch's candidates applied together
on top of the candidates already accepted. A batch that passes proves its
candidates. When a batch fails, the untouched project is tested first
(the baseline): if its own tests fail too, nothing can be proven and the run
stops saying so; otherwise the batch is bisected.
A failing batch is bisected: the first half is tested on its own; when it passes,
the failure is known to lie in the second half, which is split without testing
it again. Every accepted candidate has therefore passed the tests together with
everything accepted before it. With `baseline_first` the baseline is verified
before anything is accepted, running alongside the first batch when there are
two or more testers; that costs a test run, which the default saves.
"""

from __future__ import annotations

import concurrent.futures
import shlex
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from tars_engine.core.budget import BudgetGuard, call_until_stop
from tars_engine.core.events import one_line
from tars_engine.core.models import Candidate, SnapshotRef, TestRequest, TestResult
from tars_engine.core.role_pool import RolePool
from tars_engine.core.role_set import SnapshotMissingError, TesterRole
from tars_engine.core.snapshot import archive_digest
from tars_engine.core.state import RunOptions
from tars_engine.core.workflow_errors import WorkflowError

BASELINE_LABEL = "baseline, no change"


class BaselineFailedError(WorkflowError):
    """The project's tests fail before any change: no candidate could be proven safe."""


class SandboxRefusedError(WorkflowError):
    """The run requires a sandbox the tester cannot make: no test can run."""


def describe_failure(result: TestResult) -> str:
    if result.apply_error:
        return f"did not apply: {result.apply_error}"
    if result.timed_out:
        return f"tests timed out after {result.duration_seconds:g}s"
    if result.tests_run:
        return f"tests failed: {result.failures} failures, {result.errors} errors of {result.tests_run}"
    last_lines = [line for line in result.output.strip().splitlines() if line.strip()][-3:]
    return "tests failed: " + (one_line(" / ".join(last_lines), 300) or "no output")


@dataclass(frozen=True)
class GateHooks:
    """How the gate reaches the run it serves; each is called as soon as the gate knows."""

    proven: Callable[[], list[Candidate]]
    """The accepted candidates the snapshot lacks: every batch is tested on top of them."""
    testing: Callable[[], None]
    """A batch is about to be tested."""
    tested: Callable[[str, TestResult], None]
    """A test run ended; the message names what ran and how it went."""
    baseline: Callable[[TestResult], None]
    """The untouched project's result, to be recorded before it is judged."""
    accept: Callable[[Candidate, TestResult], None]
    reject: Callable[[Candidate, TestResult], None]


class CandidateGate:
    """Tests candidates on one snapshot of the project; only what passes gets accepted."""

    def __init__(
        self,
        run_id: str,
        archive: bytes,
        testers: RolePool[TesterRole],
        options: RunOptions,
        guard: BudgetGuard,
        hooks: GateHooks,
        *,
        baseline_recorded: bool,
    ) -> None:
        self._archive = archive
        self._snapshot = SnapshotRef(run_id=run_id, digest=archive_digest(archive))
        self._testers = testers
        self._options = options
        self._guard = guard
        self._hooks = hooks
        self._baseline_recorded = baseline_recorded
        self._baseline: concurrent.futures.Future[TestResult] | None = None

    def start_baseline(self, executor: concurrent.futures.Executor) -> None:
        """With `baseline_first`, test the untouched project alongside what comes next."""
        if not self._baseline_recorded and self._options.baseline_first:
            self._baseline = executor.submit(self._run_tests, [], BASELINE_LABEL)

    def _run_tests(self, candidates: list[Candidate], label: str) -> TestResult:
        options = self._options
        request = TestRequest(
            snapshot=self._snapshot,
            candidates=candidates,
            test_command=options.test_command,
            timeout_seconds=options.test_timeout_seconds,
            sandbox=options.sandbox,
            network=options.test_network,
            env_names=options.test_env,
        )
        with self._testers.lease(self._guard.check) as tester:
            if not tester.has_snapshot(self._snapshot):
                tester.put_snapshot(self._snapshot.run_id, self._archive)
            try:
                result = self._tests_until_stop(tester, request)
            except SnapshotMissingError:
                # The tester lost its cache (restarted), or dropped a snapshot changed on disk.
                tester.put_snapshot(self._snapshot.run_id, self._archive)
                result = self._tests_until_stop(tester, request)
        if result.sandbox is not None and result.sandbox.refused:
            raise SandboxRefusedError(result.sandbox.detail)
        verdict = "passed" if result.passed else describe_failure(result)
        self._hooks.tested(f"{label}: {verdict}", result)
        return result

    def _tests_until_stop(self, tester: TesterRole, request: TestRequest) -> TestResult:
        """The tester's answer; a stop (or the deadline) meanwhile cancels the test run and raises."""
        request_id = uuid.uuid4().hex
        request = request.model_copy(update={"request_id": request_id})
        return call_until_stop(
            lambda: tester.run_tests(request),
            self._guard,
            lambda: tester.cancel_tests(request_id),
            name="tars-test",
        )

    def require_baseline(self, *, run_if_missing: bool = False) -> None:
        """Wait for the baseline started alongside; with `run_if_missing`, run it now if never run."""
        if self._baseline is not None:
            result = self._baseline.result()
            self._baseline = None
        elif run_if_missing and not self._baseline_recorded:
            result = self._run_tests([], BASELINE_LABEL)
        else:
            return
        self._baseline_recorded = True
        self._hooks.baseline(result)
        if not result.passed:
            raise BaselineFailedError(
                "the project's tests fail before any change, so no change can be proven safe "
                f"({describe_failure(result)}; ran: {shlex.join(result.command) or 'nothing'}); "
                "fix the tests, install their dependencies for that Python, or give a working "
                "test command"
            )

    def test_in_batches(self, candidates: list[Candidate]) -> None:
        batch_size = self._options.batch_size
        for start in range(0, len(candidates), batch_size):
            self._guard.check()
            self._bisect(candidates[start : start + batch_size], self._hooks.proven())

    def _bisect(
        self, group: list[Candidate], base: list[Candidate], known: TestResult | None = None
    ) -> list[Candidate]:
        """Accept what passes with `base`, reject the culprits; returns the accepted ones."""
        if known is None:
            self._hooks.testing()
        result = (
            known
            if known is not None
            else self._run_tests(base + group, f"{len(group)} candidates on {len(base)} accepted")
        )
        # Nothing is decided before a baseline started alongside has passed; and a failure
        # means something only when the untouched project passes its tests.
        self.require_baseline(run_if_missing=not result.passed)
        if result.passed:
            for candidate in group:
                self._hooks.accept(candidate, result)
            return group
        if len(group) == 1:
            self._hooks.reject(group[0], result)
            return []
        half = len(group) // 2
        first = self._bisect(group[:half], base)
        if len(first) == half:
            # base + first passed and base + group failed: the culprit is in the rest.
            return first + self._bisect(group[half:], base + first, known=result)
        return first + self._bisect(group[half:], base + first)
