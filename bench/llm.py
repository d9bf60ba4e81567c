"""Benchmark: the `ollama` engine against raw Ollama calls, and a full run on the sample project.

    .venv/bin/python bench/llm.py [--model NAME] [--ollama-host URL] [--calls N] [--skip-run]

Needs an Ollama server (--ollama-host, default $OLLAMA_HOST, else http://127.0.0.1:11434)
that has --model (default tars-gemma3-270m); without them it exits 2 with one line
`error: ...` (the engine's own preflight says which is missing). It only prints:

- at the top: the date, the machine's cores, the model, the server's version and the
  commit measured;
- the engine's overhead per call: one real task of a file of the sample project (the
  first region with a documentation finding, as the engine plans it), asked through the
  engine's `OllamaClient.chat` and through a plain streamed `POST /api/chat` with the
  same prompt, system prompt, schema and options (`num_ctx`, `num_predict`, the
  engine's temperature and seed, so both get the same answer), alternately for --calls
  rounds after one warm-up of each. Medians of the wall seconds per call and their
  ratio engine/raw, and of the part of each call outside the server's own time (wall
  minus Ollama's `total_duration`). The overhead (goal: 5% or less) is the engine's part
  outside the server's time less the raw call's, as a share of a raw call: the server's
  own time varies more between calls than anything the client adds.
  A task whose schema the server refuses is reported (`refused:`) and the next task
  of the other schema is measured instead;
- the share of well-formed answers among the engine's calls: parsed as the task's
  schema, and (for search/replace edits) applied to the file without an EditError;
  below it, Aider's published whole-file figures as an anchor (not measured here);
- unless --skip-run (it takes minutes): a full run of the workflow in-process on a
  fresh git copy of examples/sample-project (targets: ledgerly; no auto-apply, a fresh
  learning store): files, candidates, accepted changes, tokens, wall seconds, seconds
  and test runs per accepted change, and which accepted changes the model made.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel
from tars_api.names import ReplicaEnv
from tars_api.vocabulary import EngineName
from tars_engine.core.learning import LearningStore
from tars_engine.core.models import (
    AnalyzeRequest,
    FindingKind,
    GenerateRequest,
    SourceFile,
)
from tars_engine.core.settings import DEFAULT_OLLAMA_HOST, ReplicaSettings, normalize_ollama_host
from tars_engine.core.state import RunOptions, WorkflowState
from tars_engine.roles import edit_protocol
from tars_engine.roles.analyzer import Analyzer
from tars_engine.roles.edit_protocol import EditAnswer, EditError, Task, WholeFileAnswer
from tars_engine.roles.ollama_client import (
    SEED,
    TEMPERATURE,
    ModelProfile,
    OllamaClient,
    OllamaError,
)
from tars_engine.roles.ollama_engine import (
    SYSTEM_PROMPT,
    model_findings,
    output_budget,
    task_prompt,
)
from tars_engine.transports.embedded import local_workflow

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import fresh_copy  # bench/ is not a package: engine.py beside this file

DEFAULT_MODEL = "tars-gemma3-270m"
OVERHEAD_GOAL_PERCENT = 5.0
RAW_TIMEOUT_SECONDS = 900
REPOSITORY = Path(__file__).resolve().parent.parent
SAMPLE_PROJECT = REPOSITORY / "examples" / "sample-project"
SAMPLE_PACKAGE = "ledgerly"
# Aider's published results for the whole-file edit format on its 133 Python exercises.
AIDER_WHOLE_FILE = (
    ("Qwen2.5-Coder 0.5B", "14.3% correct (100% well-formed)"),
    ("Qwen2.5-Coder 1.5B", "31.6% correct"),
    ("Qwen2.5-Coder 7B", "57.9% correct"),
)


@dataclass(frozen=True)
class BenchTask:
    """One task as the engine would ask it: the file, the planned region, the messages."""

    path: str
    content: str
    task: Task
    messages: list[dict[str, str]]
    schema: type[BaseModel]
    num_predict: int


@dataclass(frozen=True)
class Call:
    """One answer, or the one-line reason there was none."""

    seconds: float
    output_tokens: int = 0
    text: str = ""
    cut_off: bool = False
    server_seconds: float = 0.0
    error: str | None = None

    @property
    def client_seconds(self) -> float:
        """The wall time outside the server's own time for the answer."""
        return self.seconds - self.server_seconds


def git_commit() -> str:
    completed = subprocess.run(
        ["git", "-C", str(REPOSITORY), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return completed.stdout.strip() or "unknown"


def documentation_tasks(profile: ModelProfile, model: str, only: str | None) -> list[BenchTask]:
    """Each planned task of the sample files that holds a documentation finding, in file order."""
    analyzer = Analyzer(ReplicaSettings(engine=EngineName.static))
    tasks: list[BenchTask] = []
    for file in sorted((SAMPLE_PROJECT / SAMPLE_PACKAGE).glob("*.py")):
        if only is not None and file.name != only:
            continue
        path = f"{SAMPLE_PACKAGE}/{file.name}"
        source = SourceFile(path=path, content=file.read_text(encoding="utf-8"))
        findings = model_findings(analyzer.analyze(AnalyzeRequest(file=source)).findings)
        request = GenerateRequest(
            file=source,
            findings=findings,
            targets=[SAMPLE_PACKAGE],
            engine=EngineName.ollama,
            model=model,
        )
        for task in edit_protocol.plan_tasks(source.content, findings):
            if not any(f.kind is FindingKind.documentation for f in task.findings):
                continue
            prompt = task_prompt(path, source.content, task, request)
            region = source.content.splitlines()[task.first - 1 : task.last]
            try:
                num_predict = output_budget(profile, prompt, "\n".join(region))
            except EditError:
                continue
            tasks.append(
                BenchTask(
                    path=path,
                    content=source.content,
                    task=task,
                    messages=[
                        {"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": prompt},
                    ],
                    schema=WholeFileAnswer if task.whole_file else EditAnswer,
                    num_predict=num_predict,
                )
            )
    return tasks


def engine_call(client: OllamaClient, profile: ModelProfile, bench: BenchTask) -> Call:
    started = time.perf_counter()
    try:
        answer = client.chat(
            profile,
            bench.messages,
            num_predict=bench.num_predict,
            response_format=bench.schema.model_json_schema(),
            cancel=None,
        )
    except OllamaError as exc:
        return Call(time.perf_counter() - started, error=str(exc))
    seconds = time.perf_counter() - started
    return Call(seconds, answer.output_tokens, answer.text, answer.cut_off, answer.server_seconds)


def raw_call(host: str, profile: ModelProfile, bench: BenchTask, keep_alive: str) -> Call:
    """The same request as the engine's, read the plainest way: one streamed POST."""
    body: dict[str, Any] = {
        "model": profile.model,
        "messages": bench.messages,
        "options": {
            "num_ctx": profile.num_ctx,
            "num_predict": bench.num_predict,
            "temperature": TEMPERATURE,
            "seed": SEED,
        },
        "format": bench.schema.model_json_schema(),
        "stream": True,
        "keep_alive": keep_alive,
    }
    started = time.perf_counter()
    text, last = "", {}
    try:
        with httpx.stream(
            "POST", f"{host}/api/chat", json=body, timeout=RAW_TIMEOUT_SECONDS
        ) as reply:
            if not reply.is_success:
                reply.read()
                return Call(
                    time.perf_counter() - started,
                    error=f"HTTP {reply.status_code}: {reply.text[:200]}",
                )
            for line in reply.iter_lines():
                if line.strip():
                    last = json.loads(line)
                    text += (last.get("message") or {}).get("content") or ""
    except httpx.HTTPError as exc:
        return Call(time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
    return Call(
        time.perf_counter() - started,
        int(last.get("eval_count") or 0),
        text,
        last.get("done_reason") == "length",
        int(last.get("total_duration") or 0) / 1e9,
    )


def well_formed(bench: BenchTask, call: Call) -> tuple[bool, bool]:
    """(parses as the task's schema, applies to the file) for one answer."""
    if call.error is not None:
        return False, False
    try:
        answer = edit_protocol.parse_answer(call.text, bench.schema)
    except EditError:
        return False, False
    try:
        if isinstance(answer, EditAnswer):
            edit_protocol.apply_edits(bench.content, bench.task, answer)
        elif isinstance(answer, WholeFileAnswer):
            edit_protocol.whole_file(bench.content, answer)
    except EditError:
        return True, False
    return True, True


def describe(bench: BenchTask) -> str:
    kind = "whole file" if bench.task.whole_file else "search/replace edits"
    rules = ", ".join(sorted({finding.rule for finding in bench.task.findings}))
    return f"{bench.path} lines {bench.task.first}-{bench.task.last} ({kind}; {rules})"


def median_of(calls: list[Call], figure: str) -> float:
    answered = [getattr(call, figure) for call in calls if call.error is None]
    return statistics.median(answered) if answered else float("nan")


def measure_overhead(
    host: str, client: OllamaClient, profile: ModelProfile, bench: BenchTask, calls: int
) -> list[Call]:
    """Print the overhead figures; return the engine's calls (warm-up excluded)."""
    print(
        f"task:                         {describe(bench)}, num_ctx {profile.num_ctx}, "
        f"num_predict {bench.num_predict}"
    )
    raw_call(host, profile, bench, client.keep_alive)
    engine: list[Call] = []
    raw: list[Call] = []
    for round_number in range(calls):
        engine.append(engine_call(client, profile, bench))
        raw.append(raw_call(host, profile, bench, client.keep_alive))
        line = f"round {round_number + 1}:"
        for name, call in (("engine", engine[-1]), ("raw", raw[-1])):
            line += f" {name} {call.seconds:.2f} s / {call.output_tokens} tokens"
            line += f" ({call.error})" if call.error else ("" if call.text else " (empty)")
            line += "," if name == "engine" else ""
        print(line)
    engine_seconds = median_of(engine, "seconds")
    raw_seconds = median_of(raw, "seconds")
    ratio = engine_seconds / raw_seconds
    answered = (sum(c.error is None for c in engine), sum(c.error is None for c in raw))
    same = sum(
        1
        for ours, theirs in zip(engine, raw, strict=True)
        if ours.error is None and ours.text == theirs.text
    )
    print(
        f"medians over {calls} alternating rounds (after one warm-up of each; answered: "
        f"engine {answered[0]}, raw {answered[1]}; the same answer in {same} of {calls}):"
    )
    print(f"seconds per call:             engine {engine_seconds:.3f}, raw {raw_seconds:.3f}")
    print(
        f"output tokens per call:       engine {median_of(engine, 'output_tokens'):.0f}, "
        f"raw {median_of(raw, 'output_tokens'):.0f}"
    )
    print(
        f"ms outside the server's time: engine {1000 * median_of(engine, 'client_seconds'):.1f}, "
        f"raw {1000 * median_of(raw, 'client_seconds'):.1f}   (wall minus Ollama's total_duration)"
    )
    # The server's own time varies from call to call more than the client's does: the
    # client's added time is the difference of the parts outside it.
    added = median_of(engine, "client_seconds") - median_of(raw, "client_seconds")
    print(f"ratio engine / raw (wall):    {ratio:8.3f}")
    print(
        f"engine overhead per call:     {1000 * added:+7.1f} ms outside the server's time, "
        f"{100 * added / raw_seconds:+.2f}% of a raw call   (goal <= {OVERHEAD_GOAL_PERCENT:.0f}%)"
    )
    return engine


def print_well_formed(bench: BenchTask, calls: list[Call]) -> None:
    results = [well_formed(bench, call) for call in calls]
    parsed = sum(1 for ok, _ in results if ok)
    applied = sum(1 for _, ok in results if ok)
    cut_off = sum(1 for call in calls if call.cut_off)
    failed = sum(1 for call in calls if call.error is not None)
    what = "applies to the file" if not bench.task.whole_file else "is a usable whole file"
    print(
        f"well-formed engine answers:   {parsed}/{len(calls)} parse as {bench.schema.__name__}, "
        f"{applied}/{len(calls)} also {what} ({100 * applied / len(calls):.0f}%); "
        f"{cut_off} cut off at num_predict, {failed} without an answer"
    )


def print_aider_anchor() -> None:
    print("anchor, published by Aider, not measured (whole-file format, 133 Python exercises):")
    for model, figure in AIDER_WHOLE_FILE:
        print(f"  {model:<20} {figure}")


def overhead_and_well_formed(
    host: str, client: OllamaClient, profile: ModelProfile, tasks: list[BenchTask], calls: int
) -> None:
    """Parts 1 and 2 on the first task the server takes; a refused schema is reported."""
    refused: dict[str, str] = {}
    for bench in tasks:
        name = bench.schema.__name__
        if name in refused:
            continue
        warm_up = engine_call(client, profile, bench)
        if warm_up.error is None:
            engine = measure_overhead(host, client, profile, bench, calls)
            print_well_formed(bench, engine)
            break
        refused[name] = warm_up.error
        print(f"refused:                      {describe(bench)}: {warm_up.error}")
    else:
        print("engine overhead per call:     not measured: the server answered no task")
    for name, error in refused.items():
        print(f"well-formed {name} answers: none: every such task fails ({error})")
    print_aider_anchor()


def print_run(state: WorkflowState, seconds: float) -> None:
    figures = state.statistics
    accepted = figures.improvements_accepted
    by_model = [candidate for candidate in state.accepted if candidate.model is not None]
    static = [candidate for candidate in state.accepted if candidate.model is None]
    print(f"phase:                        {state.phase.value} {state.message}".rstrip())
    check = state.model_check
    if check is not None:
        print(
            f"model check:                  {check.model} on Ollama {check.server_version}: "
            f"context {check.num_ctx} of {check.context_length}, "
            f"{check.tokens_per_second} tokens/s, {check.prompt_tokens_per_second} prompt "
            f"tokens/s{f', problem: {check.problem}' if check.problem else ''}"
        )
    print(f"files:                        {len(state.files):8d}")
    print(f"candidates proposed:          {figures.improvements_proposed:8d}")
    print(f"accepted changes:             {accepted:8d}")
    print(f"model tokens (budget guard):  {figures.tokens_used:8d}")
    print(f"wall seconds:                 {seconds:8.1f}")
    print(f"test runs:                    {figures.test_runs:8d}")
    if accepted:
        print(f"seconds per accepted change:  {seconds / accepted:8.1f}")
        print(f"tokens per accepted change:   {figures.tokens_used / accepted:8.0f}")
        print(f"test runs per accepted:       {figures.test_runs / accepted:8.2f}")
    print(f"accepted with a model change: {len(by_model):8d}")
    for candidate in by_model:
        print(f"  {candidate.path} ({', '.join(candidate.rules)})")
    print(f"accepted from static fixes:   {len(static):8d}")
    for candidate in static:
        print(f"  {candidate.path} ({', '.join(candidate.rules)})")


def sample_run(host: str, model: str) -> None:
    os.environ["OLLAMA_HOST"] = host
    with tempfile.TemporaryDirectory(prefix="tars-bench-llm-") as scratch:
        workspace = Path(scratch)
        # A scratch directory of its own: nothing an earlier run left there is reused.
        os.environ[ReplicaEnv.scratch_dir] = str(workspace / "scratch")
        root = fresh_copy(SAMPLE_PROJECT, workspace / SAMPLE_PROJECT.name)
        workflow = local_workflow(
            root,
            RunOptions(
                targets=[SAMPLE_PACKAGE], engine=EngineName.ollama, model=model, auto_apply=False
            ),
            learning=LearningStore(workspace / "learning.sqlite3"),
        )
        started = time.perf_counter()
        state = workflow.run()
        seconds = time.perf_counter() - started
    print(f"full run on {SAMPLE_PROJECT.name} (targets: {SAMPLE_PACKAGE}; no auto-apply):")
    print_run(state, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"default {DEFAULT_MODEL}")
    parser.add_argument(
        "--ollama-host",
        default=os.environ.get("OLLAMA_HOST") or DEFAULT_OLLAMA_HOST,
        help=f"default $OLLAMA_HOST, else {DEFAULT_OLLAMA_HOST}",
    )
    parser.add_argument(
        "--calls", type=int, default=5, help="alternating rounds of engine and raw (default 5)"
    )
    parser.add_argument(
        "--file", help=f"the {SAMPLE_PACKAGE}/ file to take the task from (default: the first)"
    )
    parser.add_argument("--skip-run", action="store_true", help="skip the full run (the slow one)")
    arguments = parser.parse_args()
    if arguments.calls < 1:
        raise SystemExit("--calls must be at least 1")
    host = normalize_ollama_host(arguments.ollama_host)
    client = OllamaClient(host)
    try:
        profile = client.preflight(
            arguments.model, wanted_context=ReplicaSettings.from_env().ollama_num_ctx
        )
    except OllamaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"date:                         {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"cores:                        {os.cpu_count()}")
    print(f"model:                        {profile.model}")
    print(f"server:                       Ollama {profile.version} at {host}")
    print(f"commit:                       {git_commit()}")
    tasks = documentation_tasks(profile, arguments.model, arguments.file)
    if not tasks:
        print(f"error: no documentation task in {SAMPLE_PROJECT / SAMPLE_PACKAGE}")
        sys.exit(2)
    overhead_and_well_formed(host, client, profile, tasks, arguments.calls)
    if not arguments.skip_run:
        sample_run(host, arguments.model)


if __name__ == "__main__":
    main()
