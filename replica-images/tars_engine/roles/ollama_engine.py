"""The ollama engine: a local model's review (analyzer) and improvements (generator).

Ollama silently truncates a prompt longer than its context window, so every
request sizes `num_ctx` to the prompt plus the output budget. Generation is
bounded by `num_predict` and the client timeout; an unreachable or slow server
yields a rejection (or, for the review, a note), never an exception or a hang.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass

import httpx
import ollama
from pydantic import BaseModel, Field, ValidationError

from tars_engine.core.diffs import PatchError, apply_file_patch, parse_unified_diff
from tars_engine.core.models import (
    Finding,
    FindingKind,
    FindingSource,
    GenerateRequest,
    GenerateResult,
    LearnedExample,
    Location,
    Severity,
    SourceFile,
)
from tars_engine.core.settings import ReplicaSettings
from tars_engine.core.validation import finish_candidate
from tars_engine.roles.model_review import ModelReviewOutcome

# Code tokenizes denser than prose: three characters per token errs on the large side.
CHARS_PER_TOKEN = 3
CONTEXT_STEP = 1024
MIN_CONTEXT = 2048
PROMPT_OVERHEAD_TOKENS = 256
REVIEW_OUTPUT_TOKENS = 1024
MIN_OUTPUT_TOKENS = 256
MAX_REVIEW_FINDINGS = 20
MAX_PROMPT_FINDINGS = 40
MAX_EXAMPLES = 3
MAX_EXAMPLE_CHARS = 2000
MAX_RATIONALE_CHARS = 600
# A whole-file answer this much shorter than the file is a snippet, not the file.
FRAGMENT_RATIO = 0.5

_FENCE = re.compile(r"```([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)

GENERATE_SYSTEM_PROMPT = """\
You improve one Python file of a project without changing its behaviour.
Address the findings you are given; keep every public name, signature and \
behaviour; never touch tests or other files.
Answer with the complete improved file in a single ```python block, or with a \
unified diff of this file in a single ```diff block. Put a one-paragraph \
explanation before the block."""

REVIEW_SYSTEM_PROMPT = """\
You review one Python file for real problems a linter misses: bugs, security \
issues, performance traps, needless complexity, missing documentation of \
public behaviour. Report only concrete problems, each with the line it is on. \
Answer in the JSON format you are given; an empty list is a fine answer."""


class ReviewedProblem(BaseModel):
    line: int = Field(ge=1)
    kind: FindingKind
    severity: Severity
    message: str = Field(min_length=1, max_length=400)


class ModelReview(BaseModel):
    """The structured output a model review must follow (sent as `format`)."""

    findings: list[ReviewedProblem]


class AnswerError(ValueError):
    """A model answer that is not a usable change; the message is the rejection."""


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def context_size(prompt_tokens: int, output_tokens: int, cap: int) -> int | None:
    """num_ctx for a request: prompt plus output, rounded up; None when over the cap."""
    needed = prompt_tokens + output_tokens + PROMPT_OVERHEAD_TOKENS
    if needed > cap:
        return None
    return max(MIN_CONTEXT, math.ceil(needed / CONTEXT_STEP) * CONTEXT_STEP)


def _finding_lines(findings: list[Finding]) -> str:
    lines = [
        f"- line {f.location.line} [{f.rule}] {f.kind.value}/{f.severity.value}: {f.message}"
        for f in findings[:MAX_PROMPT_FINDINGS]
    ]
    if len(findings) > MAX_PROMPT_FINDINGS:
        lines.append(f"- ... and {len(findings) - MAX_PROMPT_FINDINGS} more")
    return "\n".join(lines) or "- none"


def _example_text(examples: list[LearnedExample]) -> str:
    parts = []
    for example in examples[:MAX_EXAMPLES]:
        diff = example.diff[:MAX_EXAMPLE_CHARS]
        parts.append(
            f"Accepted before for [{example.rule}] ({example.kind.value}):\n```diff\n{diff}```"
        )
    return "\n\n".join(parts)


def generation_prompt(request: GenerateRequest) -> str:
    sections = [
        f"File: {request.file.path}",
        f"Findings to address:\n{_finding_lines(request.findings)}",
    ]
    if request.examples:
        sections.append(
            "Improvements of this kind that passed the project's tests before:\n\n"
            + _example_text(request.examples)
        )
    if request.feedback:
        sections.append(
            f"Your previous attempt (#{request.attempt - 1}) failed: {request.feedback}"
        )
    sections.append(f"The file:\n```python\n{request.file.content}```")
    return "\n\n".join(sections)


def review_prompt(file: SourceFile, findings: list[Finding]) -> str:
    return (
        f"File: {file.path}\n\nThe linter already reported:\n{_finding_lines(findings)}\n\n"
        f"The file:\n```python\n{file.content}```"
    )


def _top_level_names(content: str) -> set[str]:
    return {
        node.name
        for node in ast.parse(content).body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    }


def _same_file(header_path: str, path: str) -> bool:
    """Models often name the file relative to its directory: `calc.py` for `pkg/calc.py`."""
    return header_path == path or path.endswith(f"/{header_path}")


def _apply_model_diff(diff: str, source: SourceFile) -> str:
    try:
        patches = parse_unified_diff(diff, lenient=True)
    except PatchError as exc:
        raise AnswerError(f"model's diff is unreadable: {exc}") from exc
    content = source.content
    for patch in patches:
        for header in (patch.old_path, patch.new_path):
            if not _same_file(header, source.path):
                raise AnswerError(f"model's diff edits another file: {header}")
        try:
            content = apply_file_patch(content, patch, lenient=True)
        except PatchError as exc:
            raise AnswerError(f"model's diff does not apply: {exc}") from exc
    return content


def _looks_like_diff(text: str) -> bool:
    return text.lstrip().startswith(("--- ", "diff --git")) or "\n@@ " in text


def new_content_from_answer(answer: str, source: SourceFile) -> tuple[str, str]:
    """(new file content, the model's explanation) from a whole-file or diff answer."""
    if not answer.strip():
        raise AnswerError("model answered nothing")
    blocks = _FENCE.findall(answer)
    explanation = _FENCE.sub("", answer).strip()[:MAX_RATIONALE_CHARS]
    diff_blocks = [
        body for lang, body in blocks if lang in ("diff", "patch") or _looks_like_diff(body)
    ]
    code_blocks = [body for lang, body in blocks if lang in ("python", "py", "python3", "")]
    if diff_blocks:
        content = _apply_model_diff(diff_blocks[0], source)
    elif code_blocks:
        content = max(code_blocks, key=len)
    elif _looks_like_diff(answer):
        content, explanation = _apply_model_diff(answer, source), ""
    else:
        raise AnswerError("model answer holds neither a python block nor a diff")
    if source.content.endswith("\n") and not content.endswith("\n"):
        content += "\n"
    try:
        kept = _top_level_names(content)
    except SyntaxError as exc:
        raise AnswerError(f"model's file does not parse (line {exc.lineno}: {exc.msg})") from exc
    dropped = _top_level_names(source.content) - kept
    if dropped:
        raise AnswerError(f"model's answer drops definitions: {', '.join(sorted(dropped))}")
    if len(content.strip()) < FRAGMENT_RATIO * len(source.content.strip()):
        raise AnswerError("model's file is much shorter than the original (a fragment?)")
    return content, explanation


@dataclass(frozen=True)
class OllamaStatus:
    reachable: bool
    version: str | None = None
    models: tuple[str, ...] = ()
    error: str | None = None

    def has_model(self, model: str) -> bool:
        wanted = model if ":" in model else f"{model}:latest"
        return any(name in (model, wanted) for name in self.models)


class OllamaEngine:
    """Model review and generation against one Ollama server."""

    def __init__(self, settings: ReplicaSettings) -> None:
        self.settings = settings
        self.host = settings.ollama_host
        self._client = ollama.Client(
            host=self.host,
            timeout=httpx.Timeout(
                settings.ollama_timeout_seconds, connect=settings.ollama_connect_timeout_seconds
            ),
        )

    def status(self) -> OllamaStatus:
        """Whether the server answers, its version and the models it has pulled."""
        try:
            answer = httpx.get(
                f"{self.host}/api/version", timeout=self.settings.ollama_connect_timeout_seconds
            )
            answer.raise_for_status()
            version = answer.json().get("version")
            models = tuple(model.model or "" for model in self._client.list().models)
        except (ConnectionError, httpx.HTTPError, ollama.ResponseError, ValueError) as exc:
            return OllamaStatus(reachable=False, error=f"ollama unreachable at {self.host}: {exc}")
        return OllamaStatus(reachable=True, version=version, models=models)

    def _chat(
        self,
        model: str,
        system: str,
        prompt: str,
        output_tokens: int,
        response_format: dict[str, object] | None = None,
    ) -> tuple[str, int]:
        """(answer text, tokens used); raises AnswerError with the reason on any failure."""
        prompt_tokens = estimate_tokens(system) + estimate_tokens(prompt)
        num_ctx = context_size(prompt_tokens, output_tokens, self.settings.max_context_tokens)
        if num_ctx is None:
            raise AnswerError(
                f"request needs about {prompt_tokens + output_tokens} tokens, more than the "
                f"context cap of {self.settings.max_context_tokens}"
            )
        try:
            response = self._client.chat(
                model=model,
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": prompt},
                ],
                format=response_format,
                options={"num_ctx": num_ctx, "num_predict": output_tokens, "temperature": 0.2},
                stream=False,
            )
        except ollama.ResponseError as exc:
            raise AnswerError(f"ollama at {self.host} refused: {exc.error}") from exc
        except (ConnectionError, httpx.HTTPError, OSError) as exc:
            raise AnswerError(
                f"ollama unreachable at {self.host}: {exc or type(exc).__name__}"
            ) from exc
        tokens = (response.prompt_eval_count or 0) + (response.eval_count or 0)
        if response.done_reason == "length":
            raise AnswerError(f"model answer was cut off at {output_tokens} tokens")
        return response.message.content or "", tokens

    def generate(self, request: GenerateRequest) -> GenerateResult:
        source = request.file
        prompt = generation_prompt(request)
        # Room for the whole file again, with slack for the explanation and edits.
        file_tokens = estimate_tokens(source.content)
        output_tokens = file_tokens + file_tokens // 2 + 512
        if request.max_tokens is not None:
            # max_tokens is what the run may still spend: prompt and answer together.
            prompt_tokens = estimate_tokens(GENERATE_SYSTEM_PROMPT) + estimate_tokens(prompt)
            available = request.max_tokens - prompt_tokens
            if available < MIN_OUTPUT_TOKENS:
                return GenerateResult(
                    candidate=None,
                    rejection=f"token budget too small: {request.max_tokens} left, the prompt "
                    f"alone needs about {prompt_tokens}",
                )
            output_tokens = min(output_tokens, available)
        tokens = 0
        try:
            answer, tokens = self._chat(
                request.model, GENERATE_SYSTEM_PROMPT, prompt, output_tokens
            )
            content, explanation = new_content_from_answer(answer, source)
        except AnswerError as exc:
            return GenerateResult(candidate=None, rejection=str(exc), tokens_used=tokens)
        rules = sorted({finding.rule for finding in request.findings})
        return finish_candidate(
            request,
            content,
            rationale=explanation or f"Model-proposed change addressing {', '.join(rules)}",
            rules=rules,
            kinds=sorted({f.kind for f in request.findings}, key=lambda kind: kind.value),
            model=request.model,
            tokens_used=tokens,
        )

    def review(self, file: SourceFile, findings: list[Finding], model: str) -> ModelReviewOutcome:
        try:
            answer, tokens = self._chat(
                model,
                REVIEW_SYSTEM_PROMPT,
                review_prompt(file, findings),
                REVIEW_OUTPUT_TOKENS,
                response_format=ModelReview.model_json_schema(),
            )
        except AnswerError as exc:
            return ModelReviewOutcome(findings=[], note=f"model review skipped: {exc}")
        try:
            review = ModelReview.model_validate_json(answer)
        except ValidationError as exc:
            note = f"model review unusable: {exc.error_count()} schema errors"
            return ModelReviewOutcome(findings=[], tokens_used=tokens, note=note)
        last_line = max(1, file.content.count("\n") + 1)
        reviewed = [
            Finding(
                kind=problem.kind,
                severity=problem.severity,
                source=FindingSource.model,
                rule="model-review",
                message=problem.message,
                location=Location(line=min(problem.line, last_line)),
            )
            for problem in review.findings[:MAX_REVIEW_FINDINGS]
        ]
        return ModelReviewOutcome(findings=reviewed, tokens_used=tokens)
