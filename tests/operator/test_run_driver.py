"""The run driver's decisions: which coordinator pods, what status a report makes, which Events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tars_api.meta import find_condition
from tars_api.run import (
    RunPhase,
    RunReason,
    RunSource,
    RunStage,
    RunStatistics,
    SelfCodingRun,
    SelfCodingRunStatus,
    UploadSource,
)
from tars_api.vocabulary import Role
from tars_engine.cluster.run_api import RunReport
from tars_operator.run_driver import (
    IndexedReplica,
    Outcome,
    coordinator_urls,
    deadline_passed,
    mirrored_status,
    ready_roles,
    status_changed,
    transitions,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def run(status: SelfCodingRunStatus | None = None, **spec: object) -> SelfCodingRun:
    built = SelfCodingRun.build(
        "r1",
        ["src"],
        RunSource(upload=UploadSource(config_map="r1-upload")),
        namespace="work",
        **spec,
    )
    built.metadata.generation = 2
    built.metadata.uid = "uid-1"
    return built.model_copy(update={"status": status})


def report(**status: object) -> RunReport:
    finished = bool(status.pop("finished", False))
    return RunReport(
        uid="uid-1", status=SelfCodingRunStatus.model_validate(status), finished=finished
    )


def test_only_ready_endpoints_of_the_named_port_are_coordinators() -> None:
    slices: list[dict[str, Any]] = [
        {
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["198.18.0.7"], "conditions": {"ready": True}},
                {"addresses": ["198.18.0.8"], "conditions": {"ready": False}},
            ],
        },
        {"ports": [], "endpoints": [{"addresses": ["198.18.0.9"]}]},
    ]
    assert coordinator_urls(slices) == ["http://198.18.0.7:8080"]


def test_readiness_index_entries_become_ready_names_by_role() -> None:
    entries = [
        IndexedReplica("generator", "g2", True, ""),
        IndexedReplica("generator", "g1", True, ""),
        IndexedReplica("tester", "t", False, ""),
    ]
    assert ready_roles(entries) == {Role.generator: ["g1", "g2"]}


def test_a_runs_own_testers_stand_in_for_the_shared_ones_and_serve_no_other_run() -> None:
    entries = [
        IndexedReplica("generator", "generator", True, ""),
        IndexedReplica("tester", "tester", True, ""),
        IndexedReplica("tester", "r1-tester", True, "r1"),
        IndexedReplica("tester", "r2-tester", False, "r2"),
    ]
    assert ready_roles(entries) == {Role.generator: ["generator"], Role.tester: ["tester"]}
    assert ready_roles(entries, "r1") == {
        Role.generator: ["generator"],
        Role.tester: ["r1-tester"],
    }
    # r2's tester is not ready yet: the shared tester never stands in for it.
    assert ready_roles(entries, "r2") == {Role.generator: ["generator"]}


def test_a_report_is_mirrored_as_it_is_with_the_operators_conditions() -> None:
    statistics = RunStatistics(files_total=4, files_processed=1)
    mirrored = mirrored_status(
        run(),
        report(
            phase="Running",
            stage="Testing",
            currentFile="src/a.py",
            progress="1/4",
            statistics=statistics.to_dict(),
            startTime="2026-01-01T12:00:00Z",
        ),
        "coordinator",
        now=T0,
    )
    assert (mirrored.phase, mirrored.stage, mirrored.progress) == (
        RunPhase.running,
        RunStage.testing,
        "1/4",
    )
    assert mirrored.statistics == statistics
    assert mirrored.coordinator == "coordinator"
    assert mirrored.observed_generation == 2
    progressing = find_condition(mirrored.conditions, "Progressing")
    assert progressing is not None and progressing.is_true and progressing.reason == "Running"
    assert mirrored.completion_time is None


def test_a_finished_report_completes_the_run_and_a_deadline_overrides_its_phase() -> None:
    finished = report(phase="Stopped", stage="Done", finished=True)
    stopped = mirrored_status(run(), finished, "c", now=T0)
    complete = find_condition(stopped.conditions, "Complete")
    assert stopped.phase is RunPhase.stopped and complete is not None and complete.is_true
    assert stopped.completion_time == T0
    outcome = Outcome(RunPhase.failed, RunReason.deadline_exceeded, "deadlineSeconds (60) exceeded")
    failed = mirrored_status(run(), finished, "c", now=T0, outcome=outcome)
    complete = find_condition(failed.conditions, "Complete")
    assert failed.phase is RunPhase.failed
    assert complete is not None and complete.reason == RunReason.deadline_exceeded


def test_an_unfinished_report_never_ends_the_run() -> None:
    mirrored = mirrored_status(run(), report(phase="Succeeded", stage="Done"), "c", now=T0)
    assert mirrored.phase is RunPhase.running


def test_deadline_counts_from_the_start_time() -> None:
    started = SelfCodingRunStatus(phase=RunPhase.running, start_time=T0)
    assert not deadline_passed(run(), T0 + timedelta(hours=5))
    assert not deadline_passed(run(started, deadline_seconds=60), T0 + timedelta(seconds=59))
    assert deadline_passed(run(started, deadline_seconds=60), T0 + timedelta(seconds=60))


def test_unchanged_status_is_not_written_and_transitions_make_events() -> None:
    first = mirrored_status(run(), report(phase="Running", stage="Analyzing"), "c", now=T0)
    assert status_changed(None, first)
    again = mirrored_status(
        run(first), report(phase="Running", stage="Analyzing"), "c", now=T0 + timedelta(seconds=1)
    )
    assert not status_changed(first, again)
    assert [event.reason for event in transitions(None, first)] == ["Running", "StageAnalyzing"]
    later = mirrored_status(run(first), report(phase="Running", stage="Testing"), "c", now=T0)
    assert [event.reason for event in transitions(first, later)] == ["StageTesting"]
    done = mirrored_status(
        run(later), report(phase="Failed", stage="Done", finished=True), "c", now=T0
    )
    events = transitions(later, done)
    assert [(event.type, event.reason) for event in events] == [
        ("Warning", "Failed"),
        ("Normal", "StageDone"),
    ]
