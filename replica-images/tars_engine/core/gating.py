"""Test gating: which candidates the project's tests prove, tested on the run's testers.

Candidates are tested in batches, all of a batch's candidates applied together
on top of the candidates already accepted. A batch proves its candidates when its
tests pass and they are the tests the untouched project (the baseline) ran: at
least one, none of them skipped, deselected or lost on the way. So the baseline is
always tested, once per run: if its own tests fail or run nothing, nothing can be
proven and the run stops saying so.
A failing batch is bisected: the first half is tested on its own; when it passes,
the failure is known to lie in the second half, which is split without testing
it again. Where the failing run's output names the files of some candidates (a
traceback through them, an import that broke), those go last and the split falls
just before them: when the rest passes, they are known to fail without a test. Every accepted candidate has therefore passed the tests together with
everything accepted before it. With `baseline_first` the baseline is tested before
anything else, alongside the first batch when there are two or more testers;
otherwise after the first batch.

A file's rules are bisected the same way (`next_rule_groups`): when the static
engine's change to a file fails its tests, its rules are split in halves, each
half a candidate of its own, tested in the next batch on top of what passed; a
half that passes is accepted, and the rules left at the end are the culprits.
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
from tars_engine.core.state import RuleGroup, RunOptions
from tars_engine.core.workflow_errors import WorkflowError

BASELINE_LABEL = "baseline, no change"


class BaselineFailedError(WorkflowError):
    """The project's tests fail before any change: no candidate could be proven safe."""


class SandboxRefusedError(WorkflowError):
    """The run requires a sandbox the tester cannot make: no test can run."""


def describe_failure(result: TestResult) -> str:
    if result.environment is not None and result.environment.failed:
        return result.environment.detail
    if result.unproven:
        return result.unproven
    if result.apply_error:
        return f"did not apply: {result.apply_error}"
    if result.timed_out:
        return f"tests timed out after {result.duration_seconds:g}s"
    if result.tests_run:
        return f"tests failed: {result.failures} failures, {result.errors} errors of {result.tests_run}"
    last_lines = [line for line in result.output.strip().splitlines() if line.strip()][-3:]
    return "tests failed: " + (one_line(" / ".join(last_lines), 300) or "no output")


def unproven_reason(result: TestResult, baseline: TestResult | None) -> str | None:
    """Why a test run whose command passed proves nothing, or None when it proves."""
    if result.executed == 0:
        if result.tests_run == 0:
            return (
                "no test ran: TARS counts the tests in pytest's JUnit report, and the test "
                "command produced none"
            )
        return f"no test ran: {result.tests_run} collected, {result.skipped} skipped"
    if baseline is None or result.executed_digest == baseline.executed_digest:
        return None
    if result.executed < baseline.executed:
        return (
            f"only {result.executed} of the baseline's {baseline.executed} tests ran: tests "
            "were skipped, deselected or lost"
        )
    return (
        f"{result.executed} tests ran, not the baseline's {baseline.executed} tests: the "
        "candidates changed which tests run"
    )


def judged(result: TestResult, baseline: TestResult | None) -> TestResult:
    """`result` as the gate counts it: a pass that proves nothing is no pass."""
    if not result.passed:
        return result
    reason = unproven_reason(result, baseline)
    if reason is None:
        return result
    return result.model_copy(update={"passed": False, "unproven": reason})


def _after_failure(rules: list[str], rest: list[RuleGroup]) -> tuple[list[RuleGroup], list[str]]:
    # What followed the failed group no longer follows a pass.
    if rest and rest[0].fails_after_a_pass:
        rest = [rest[0].model_copy(update={"fails_after_a_pass": False}), *rest[1:]]
    if len(rules) <= 1:
        return rest, list(rules)
    half = len(rules) // 2
    halves = [RuleGroup(rules=rules[:half]), RuleGroup(rules=rules[half:], fails_after_a_pass=True)]
    return [*halves, *rest], []


def next_rule_groups(
    groups: list[RuleGroup], passed: bool | None, rules: list[str]
) -> tuple[list[RuleGroup], list[str]]:
    """The rule groups left to try once the first of `groups` was tried, and the rules
    found to fail the tests.

    `rules` are those the first group's change fixed; `passed` says how its tests went
    (None: no change was made of it). As in the candidates' bisection, a failed group
    is split and its first half tried next; when a first half passes, its other half
    is known to fail, so it is split (or, one rule, found out) without a test of its own.
    """
    rest = list(groups[1:])
    if passed is False:
        return _after_failure(rules, rest)
    if passed is True and rest and rest[0].fails_after_a_pass:
        known = rest.pop(0)
        return _after_failure(known.rules or [], rest)
    if rest and rest[0].fails_after_a_pass:
        # Nothing was tested: the other half must be.
        rest[0] = rest[0].model_copy(update={"fails_after_a_pass": False})
    return rest, []


def suspects_last(group: list[Candidate], result: TestResult) -> tuple[list[Candidate], int]:
    """`group` reordered for its bisection, and where to split it.

    The candidates whose file the failing output names go last, the split just before
    them; when it names none, or all, the order stays and the split is in the middle.
    """
    named = [candidate for candidate in group if candidate.path in result.output]
    if not named or len(named) == len(group):
        return group, len(group) // 2
    others = [candidate for candidate in group if candidate not in named]
    return [*others, *named], len(others)


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
        baseline: TestResult | None,
    ) -> None:
        self._archive = archive
        self._snapshot = SnapshotRef(run_id=run_id, digest=archive_digest(archive))
        self._testers = testers
        self._options = options
        self._guard = guard
        self._hooks = hooks
        self._baseline_result = baseline
        """The untouched project's result, once known (recorded by an earlier attempt, too)."""
        self._baseline: concurrent.futures.Future[TestResult] | None = None

    def start_baseline(self, executor: concurrent.futures.Executor) -> None:
        """With `baseline_first`, test the untouched project alongside what comes next."""
        if self._baseline_result is None and self._options.baseline_first:
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
            environment=options.test_environment,
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

    def require_baseline(self, *, run_if_missing: bool = True) -> TestResult | None:
        """The baseline's result: recorded, started alongside, or (`run_if_missing`) run now."""
        if self._baseline_result is not None:
            return self._baseline_result
        if self._baseline is not None:
            result = self._baseline.result()
            self._baseline = None
        elif run_if_missing:
            result = self._run_tests([], BASELINE_LABEL)
        else:
            return None
        self._baseline_result = result
        self._hooks.baseline(result)
        problem = describe_failure(result) if not result.passed else unproven_reason(result, None)
        if problem is not None:
            raise BaselineFailedError(
                "the project's tests fail before any change, so no change can be proven safe "
                f"({problem}; ran: {shlex.join(result.command) or 'nothing'}); "
                "fix the tests, install their dependencies for that Python, or give a working "
                "test command"
            )
        return result

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
        # Nothing is decided before the untouched project has passed its tests: a failure
        # means something only then, and a pass proves only the tests the baseline ran.
        result = judged(result, self.require_baseline())
        if result.passed:
            for candidate in group:
                self._hooks.accept(candidate, result)
            return group
        if len(group) == 1:
            self._hooks.reject(group[0], result)
            return []
        group, half = suspects_last(group, result)
        first = self._bisect(group[:half], base)
        if len(first) == half:
            # base + first passed and base + group failed: the culprit is in the rest.
            return first + self._bisect(group[half:], base + first, known=result)
        return first + self._bisect(group[half:], base + first)
