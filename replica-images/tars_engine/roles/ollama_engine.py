"""The ollama engine: a local model's review (analyzer) and the changes ruff cannot make (generator).

The model is asked only for what the static engine cannot do (docstrings, complexity,
the review's findings), one focused task per request (`edit_protocol`), answered through
Ollama's structured outputs. Each task's result must parse, keep every name the file
defines and add no ruff finding, or it is dropped with its reason while the other tasks
of the file go on. The server is reached through `OllamaClient`: a preflight per model,
one context length, streamed answers with deadlines, and a stop that cancels the request
in flight.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from dataclasses import dataclass, field

from pydantic import BaseModel, Field, ValidationError

from tars_engine.core import python_ast
from tars_engine.core.models import (
    Finding,
    FindingKind,
    FindingSource,
    GenerateRequest,
    LearnedExample,
    Location,
    Severity,
    SourceFile,
)
from tars_engine.core.settings import ReplicaSettings
from tars_engine.core.state import write_atomically
from tars_engine.core.validation import defined_names, syntax_problem
from tars_engine.roles import ruff_tool
from tars_engine.roles.edit_protocol import (
    EditAnswer,
    EditError,
    Task,
    WholeFileAnswer,
    apply_edits,
    numbered,
    parse_answer,
    plan_tasks,
    whole_file,
)
from tars_engine.roles.model_review import ModelReviewOutcome
from tars_engine.roles.ollama_client import (
    ModelProfile,
    OllamaClient,
    OllamaError,
    estimate_tokens,
)

MAX_REVIEW_FINDINGS = 5
MAX_REVIEW_MESSAGE = 200
REVIEW_OUTPUT_TOKENS = 400
# Room for an edit answer: the region again, its replacement and a sentence.
MIN_OUTPUT_TOKENS = 256
MAX_EXAMPLES = 2
MAX_EXAMPLE_CHARS = 1200
MAX_REVIEW_FILE_LINES = 400

SYSTEM_PROMPT = """\
You improve Python code without changing what it does. You are given one region of \
a file with line numbers, and findings about it. Fix those findings only. Keep every \
function, class, method and constant name. Never change tests. Answer with JSON only, \
in exactly the format you are given."""

EDIT_FORMAT = """\
Answer format (JSON): {"explanation": "one sentence", "edits": [{"search": "lines \
copied exactly from the region, without the line numbers", "replace": "the new \
lines"}]}"""

WHOLE_FILE_FORMAT = """\
Answer format (JSON): {"explanation": "one sentence", "content": "the complete \
improved file"}"""

REVIEW_SYSTEM_PROMPT = """\
You review one Python file for real problems a linter misses: bugs, security issues, \
performance traps, needless complexity. Report at most five, each with its line and a \
short message. An empty list is a fine answer. Answer with JSON only."""


class ReviewedProblem(BaseModel):
    line: int = Field(ge=1)
    kind: FindingKind
    severity: Severity
    message: str = Field(min_length=1, max_length=MAX_REVIEW_MESSAGE)


class ModelReview(BaseModel):
    """The structured output a review must follow (sent as `format`): bounded, so a small
    model that starts repeating itself is stopped by the schema, not by the token limit."""

    findings: list[ReviewedProblem] = Field(max_length=MAX_REVIEW_FINDINGS)


def model_findings(findings: list[Finding]) -> list[Finding]:
    """What the model is asked for: everything the static engine's fixes do not cover."""
    return [
        finding
        for finding in findings
        if not (finding.source.fixed_statically and finding.fix_available)
    ]


def _finding_lines(findings: tuple[Finding, ...] | list[Finding]) -> str:
    return "\n".join(
        f"- line {f.location.line} [{f.rule}] {f.kind.value}: {f.message}" for f in findings
    )


def _example_text(examples: list[LearnedExample]) -> str:
    return "\n\n".join(
        f"Accepted before for [{example.rule}]:\n{example.diff[:MAX_EXAMPLE_CHARS]}"
        for example in examples[:MAX_EXAMPLES]
    )


def task_prompt(path: str, content: str, task: Task, request: GenerateRequest) -> str:
    line_count = len(content.splitlines())
    where = "the whole file" if task.whole_file else f"lines {task.first}-{task.last}"
    sections = [
        f"File: {path} ({line_count} lines); region: {where}.",
        f"Findings to fix:\n{_finding_lines(task.findings)}",
    ]
    if request.examples:
        sections.append(
            "Changes like these passed the project's tests:\n" + _example_text(request.examples)
        )
    if request.feedback:
        sections.append(f"Your previous answer was refused: {request.feedback}")
    sections.append(f"Region:\n{numbered(content, task.first, task.last)}")
    sections.append(WHOLE_FILE_FORMAT if task.whole_file else EDIT_FORMAT)
    return "\n\n".join(sections)


def _answer_key(
    profile: ModelProfile,
    messages: list[dict[str, str]],
    num_predict: int,
    response_format: dict[str, object],
) -> str:
    asked = [profile.model, profile.num_ctx, num_predict, messages, response_format]
    return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()


# Preflights done in this process, by (server, model, wanted context).
_PROFILES: dict[tuple[str, str, int], ModelProfile] = {}
_PREFLIGHTS = threading.Lock()


def output_budget(profile: ModelProfile, prompt: str, region: str) -> int:
    """num_predict for a task's answer: the region three times over, within the context."""
    prompt_tokens = estimate_tokens(SYSTEM_PROMPT) + estimate_tokens(prompt)
    # JSON escapes every newline and quote of the code it carries: half again as long.
    wanted = max(MIN_OUTPUT_TOKENS, 3 * estimate_tokens(region) + 256)
    available = profile.num_ctx - prompt_tokens
    if available < MIN_OUTPUT_TOKENS:
        raise EditError(
            f"the task needs about {prompt_tokens} prompt tokens, more than the run's "
            f"context of {profile.num_ctx} allows"
        )
    return min(wanted, available)


class TaskFailed(Exception):
    """A task the model answered unusably; the tokens it spent still count."""

    def __init__(self, reason: str, tokens: int) -> None:
        super().__init__(reason)
        self.tokens = tokens


@dataclass
class ModelChange:
    """What the model's tasks made of one file: the new content and what each task did."""

    content: str
    addressed: list[Finding] = field(default_factory=list)
    explanations: list[str] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)
    tokens_used: int = 0


class OllamaEngine:
    """Model review and generation against one Ollama server."""

    def __init__(self, settings: ReplicaSettings) -> None:
        self.settings = settings
        self.client = OllamaClient(
            settings.ollama_host,
            connect_timeout=settings.ollama_connect_timeout_seconds,
            keep_alive=settings.ollama_keep_alive,
            parallel=settings.ollama_parallel,
        )
        self._answers = settings.scratch_dir / "model-answers"
        self._lock = threading.Lock()
        self._cancels: dict[str, threading.Event] = {}

    def preflight(self, model: str, cancel: threading.Event | None = None) -> ModelProfile:
        """The model's profile, checked once per server and model in this process.

        The analyzer's and the generator's engines share it, and a preflight under way
        makes the others wait for it rather than probe the server too.
        """
        key = (self.client.host, model, self.settings.ollama_num_ctx)
        with _PREFLIGHTS:
            profile = _PROFILES.get(key)
            if profile is None:
                profile = self.client.preflight(
                    model, wanted_context=self.settings.ollama_num_ctx, cancel=cancel
                )
                _PROFILES[key] = profile
        return profile

    def cancel(self, request_id: str) -> None:
        with self._lock:
            event = self._cancels.setdefault(request_id, threading.Event())
        event.set()

    def _ask(
        self,
        profile: ModelProfile,
        system: str,
        prompt: str,
        num_predict: int,
        schema: type[BaseModel],
        cancel: threading.Event | None,
    ) -> tuple[str, int]:
        """(the answer, tokens spent); a cut-off answer is a TaskFailed that counts its tokens.

        Answers are kept by what was asked: a run resumed after a stop or a crash gets the
        answers it already paid for without asking again (and spends no tokens on them).
        """
        messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        response_format = schema.model_json_schema()
        key = _answer_key(profile, messages, num_predict, response_format)
        cached = self._answers / f"{key}.json"
        if cached.is_file():
            stored = json.loads(cached.read_text(encoding="utf-8"))
            text, cut_off, tokens = stored["text"], stored["cutOff"], 0
        else:
            answer = self.client.chat(
                profile,
                messages,
                num_predict=num_predict,
                response_format=response_format,
                cancel=cancel,
            )
            text, cut_off, tokens = answer.text, answer.cut_off, answer.tokens
            stored = {"text": text, "cutOff": cut_off}
            write_atomically(cached, json.dumps(stored).encode(), mode=0o600)
        if cut_off:
            raise TaskFailed(f"model answer was cut off at {num_predict} tokens", tokens)
        return text, tokens

    def _task_content(
        self,
        profile: ModelProfile,
        request: GenerateRequest,
        content: str,
        task: Task,
        cancel: threading.Event,
    ) -> tuple[str, str, int]:
        """(new content, explanation, tokens) for one task; EditError or OllamaError says why not."""
        prompt = task_prompt(request.file.path, content, task, request)
        region = "\n".join(content.splitlines()[task.first - 1 : task.last])
        num_predict = output_budget(profile, prompt, region)
        schema: type[BaseModel] = WholeFileAnswer if task.whole_file else EditAnswer
        text, tokens = self._ask(profile, SYSTEM_PROMPT, prompt, num_predict, schema, cancel)
        try:
            if task.whole_file:
                answer = parse_answer(text, WholeFileAnswer)
                new, explanation = whole_file(content, answer), answer.explanation
            else:
                edits = parse_answer(text, EditAnswer)
                new, explanation = apply_edits(content, task, edits), edits.explanation
            self._check_task_result(request.file, content, new)
        except EditError as exc:
            raise TaskFailed(str(exc), tokens) from exc
        return new, explanation.strip(), tokens

    @staticmethod
    def _check_task_result(file: SourceFile, before: str, after: str) -> None:
        if after == before:
            raise EditError("the model's edits change nothing")
        problem = syntax_problem(after)
        if problem:
            raise EditError(f"the edited file does not parse ({problem})")
        dropped = defined_names(python_ast.parse(before)) - defined_names(python_ast.parse(after))
        if dropped:
            raise EditError(f"the edits drop names: {', '.join(sorted(dropped))}")
        try:
            was = Counter(d.code for d in ruff_tool.check(file.with_content(before)))
            now = Counter(d.code for d in ruff_tool.check(file.with_content(after)))
        except ruff_tool.RuffError as exc:
            raise EditError(f"ruff could not check the edits: {exc}") from exc
        added = sorted(code for code in now if now[code] > was[code])
        if added:
            raise EditError(f"the edits add ruff findings: {', '.join(added)}")

    def improve(
        self, request: GenerateRequest, content: str, findings: list[Finding]
    ) -> ModelChange:
        """Each task of the file in turn, on top of `content`; a failed task is dropped."""
        change = ModelChange(content=content)
        cancel = self._cancel_event(request.request_id)
        try:
            profile = self.preflight(request.model, cancel)
        except OllamaError as exc:
            self._forget_cancel(request.request_id)
            change.rejections.append(str(exc))
            return change
        try:
            for task in plan_tasks(content, findings):
                try:
                    new, explanation, tokens = self._task_content(
                        profile, request, change.content, task, cancel
                    )
                except (TaskFailed, EditError, OllamaError) as exc:
                    change.tokens_used += getattr(exc, "tokens", 0)
                    change.rejections.append(f"lines {task.first}-{task.last}: {exc}")
                    if cancel.is_set():
                        break
                    continue
                change.content = new
                change.tokens_used += tokens
                change.addressed.extend(task.findings)
                if explanation:
                    change.explanations.append(explanation)
        finally:
            self._forget_cancel(request.request_id)
        return change

    def _cancel_event(self, request_id: str | None) -> threading.Event:
        if request_id is None:
            return threading.Event()
        with self._lock:
            return self._cancels.setdefault(request_id, threading.Event())

    def _forget_cancel(self, request_id: str | None) -> None:
        if request_id is not None:
            with self._lock:
                self._cancels.pop(request_id, None)

    def review(
        self, file: SourceFile, findings: list[Finding], model: str, request_id: str | None = None
    ) -> ModelReviewOutcome:
        lines = file.content.splitlines()
        if len(lines) > MAX_REVIEW_FILE_LINES:
            return ModelReviewOutcome(
                findings=[], note=f"model review skipped: over {MAX_REVIEW_FILE_LINES} lines"
            )
        prompt = (
            f"File: {file.path}\n\nThe linter already reported:\n"
            f"{_finding_lines(findings[:20]) or '- nothing'}\n\n"
            f"The file:\n{numbered(file.content, 1, max(1, len(lines)))}\n\n"
            'Answer format (JSON): {"findings": [{"line": 1, "kind": "reliability", '
            '"severity": "medium", "message": "..."}]}'
        )
        cancel = self._cancel_event(request_id)
        try:
            profile = self.preflight(model, cancel)
            text, tokens = self._ask(
                profile, REVIEW_SYSTEM_PROMPT, prompt, REVIEW_OUTPUT_TOKENS, ModelReview, cancel
            )
        except TaskFailed as exc:
            note = f"model review skipped: {exc}"
            return ModelReviewOutcome(findings=[], tokens_used=exc.tokens, note=note)
        except (EditError, OllamaError) as exc:
            return ModelReviewOutcome(findings=[], note=f"model review skipped: {exc}")
        finally:
            self._forget_cancel(request_id)
        reviewed, dropped = _review_items(text, max(1, len(lines)))
        note = f"model review: {dropped} unusable items dropped" if dropped else None
        return ModelReviewOutcome(findings=reviewed, tokens_used=tokens, note=note)


def _review_items(text: str, last_line: int) -> tuple[list[Finding], int]:
    """The review's usable items; one bad item drops that item, not the review."""
    try:
        items = json.loads(text).get("findings", [])
    except (ValueError, AttributeError):
        return [], 1
    if not isinstance(items, list):
        return [], 1
    findings: list[Finding] = []
    dropped = 0
    for item in items[:MAX_REVIEW_FINDINGS]:
        if isinstance(item, dict) and isinstance(item.get("message"), str):
            item = {**item, "message": item["message"][:MAX_REVIEW_MESSAGE]}
        try:
            problem = ReviewedProblem.model_validate(item)
        except ValidationError:
            dropped += 1
            continue
        findings.append(
            Finding(
                kind=problem.kind,
                severity=problem.severity,
                source=FindingSource.model,
                rule="model-review",
                message=problem.message,
                location=Location(line=min(problem.line, last_line)),
            )
        )
    return findings, dropped
