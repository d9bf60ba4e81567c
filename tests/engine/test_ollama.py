"""The ollama engine against a local server speaking Ollama's API with recorded responses."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from tars_api.vocabulary import EngineName, Role
from tars_engine.core.diffs import apply_unified_diff, make_unified_diff
from tars_engine.core.models import (
    AnalyzeRequest,
    FindingSource,
    GenerateRequest,
    GenerateResult,
    LearnedExample,
    SourceFile,
)
from tars_engine.core.settings import ReplicaSettings
from tars_engine.replica import create_app
from tars_engine.roles.analyzer import Analyzer
from tars_engine.roles.generator import Generator
from tars_engine.roles.ollama_engine import CONTEXT_STEP, OllamaEngine, estimate_tokens
from tars_engine.transports.http_client import HttpGenerator
from tars_engine.transports.server import serve_in_thread

from tests.engine.fake_ollama import FakeOllama, fake_ollama
from tests.harness.projects import CALC

IMPROVED = CALC.replace("import os\nimport sys\n\n\n", "").replace("value == None", "value is None")
FRAGMENT = "def add(a, b):\n    return a + b\n\n\ndef describe(value):\n    ...\n"
EXAMPLE = LearnedExample(
    rule="E711",
    kind="style",
    diff=make_unified_diff("pkg/old.py", "if x == None:\n", "if x is None:\n"),
)


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with fake_ollama() as server:
        yield server


def settings_for(url: str, tmp_path: Path, **overrides: object) -> ReplicaSettings:
    return ReplicaSettings(
        engine=EngineName.ollama,
        ollama_host=url,
        scratch_dir=tmp_path / "scratch",
        **overrides,
    )


def request_for(
    content: str = CALC, path: str = "pkg/calc.py", **kwargs: object
) -> GenerateRequest:
    source = SourceFile(path=path, content=content)
    findings = Analyzer().analyze(AnalyzeRequest(file=source)).findings
    return GenerateRequest(
        file=source,
        findings=findings,
        targets=["pkg"],
        engine=EngineName.ollama,
        model="llama3",
        **kwargs,
    )


def generate(fake: FakeOllama, tmp_path: Path, request: GenerateRequest) -> GenerateResult:
    return Generator(settings_for(fake.url, tmp_path)).generate(request)


def test_whole_file_answer_becomes_a_candidate_and_the_prompt_is_complete(
    fake: FakeOllama, tmp_path: Path
) -> None:
    fake.reply(
        f"Removed unused imports and compared to None with `is`.\n\n```python\n{IMPROVED}```\n"
    )
    result = generate(
        fake,
        tmp_path,
        request_for(examples=[EXAMPLE], attempt=2, feedback="tests failed: test_add"),
    )
    assert result.candidate is not None, result.rejection
    assert result.tokens_used == 812 + 240
    assert result.candidate.model == "llama3" and result.candidate.engine is EngineName.ollama
    assert "unused imports" in result.candidate.rationale
    assert apply_unified_diff(CALC, result.candidate.diff, "pkg/calc.py") == IMPROVED

    (chat,) = fake.chats
    prompt = chat["messages"][-1]["content"]
    assert "[F401]" in prompt and "`os` imported but unused" in prompt
    assert "if x is None:" in prompt and "[E711]" in prompt  # the learned example
    assert "tests failed: test_add" in prompt and CALC in prompt
    options = chat["options"]
    assert options["num_ctx"] % CONTEXT_STEP == 0
    prompt_tokens = sum(estimate_tokens(message["content"]) for message in chat["messages"])
    assert options["num_ctx"] >= prompt_tokens + options["num_predict"]
    assert chat["stream"] is False


def test_num_ctx_grows_with_the_file_and_is_capped(fake: FakeOllama, tmp_path: Path) -> None:
    big = CALC + "".join(
        f"\n\ndef helper_{i}(value):\n    return value * {i}\n" for i in range(400)
    )
    fake.reply("no change")
    generate(fake, tmp_path, request_for(big))
    assert fake.chats[-1]["options"]["num_ctx"] > 2 * estimate_tokens(big)

    huge = SourceFile(path="pkg/calc.py", content=big * 20)
    capped = Generator(settings_for(fake.url, tmp_path, max_context_tokens=8192)).generate(
        request_for().model_copy(update={"file": huge})
    )
    assert capped.candidate is None and "context cap of 8192" in (capped.rejection or "")
    assert len(fake.chats) == 1


def test_token_budget_bounds_the_answer(fake: FakeOllama, tmp_path: Path) -> None:
    fake.reply(f"```python\n{IMPROVED}```")
    budgeted = generate(fake, tmp_path, request_for(max_tokens=3000))
    assert budgeted.candidate is not None, budgeted.rejection
    (chat,) = fake.chats
    prompt_tokens = sum(estimate_tokens(message["content"]) for message in chat["messages"])
    assert chat["options"]["num_predict"] <= 3000 - prompt_tokens

    exhausted = generate(fake, tmp_path, request_for(max_tokens=100))
    assert exhausted.candidate is None and "token budget too small" in (exhausted.rejection or "")
    assert len(fake.chats) == 1


def test_diff_answer_naming_the_file_relatively_is_accepted(
    fake: FakeOllama, tmp_path: Path
) -> None:
    sloppy_diff = make_unified_diff("calc.py", CALC, IMPROVED).replace("@@ -1,", "@@ -3,")
    fake.reply(f"Here is the diff:\n```diff\n{sloppy_diff}```")
    result = generate(fake, tmp_path, request_for())
    assert result.candidate is not None, result.rejection
    assert result.candidate.diff.startswith("--- a/pkg/calc.py\n")


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("", "answered nothing"),
        ("I think the code is fine as it is.", "neither a python block nor a diff"),
        (
            "```diff\n" + make_unified_diff("pkg/other.py", "a\n", "b\n") + "```",
            "edits another file",
        ),
        (
            "```diff\n" + make_unified_diff("../../etc/passwd", "a\n", "b\n") + "```",
            "edits another",
        ),
        (f"```python\n{CALC.split('def describe')[0]}```", "drops definitions: describe"),
        ("```python\ndef add(a, b:\n```", "does not parse"),
        (f"```python\n{FRAGMENT}```", "shorter than the original"),
        (f"```python\n{CALC}```", "no-op change"),
    ],
    ids=["empty", "prose", "other-file", "outside", "drops-code", "syntax", "fragment", "no-op"],
)
def test_unusable_answers_are_rejected_with_a_reason(
    fake: FakeOllama, tmp_path: Path, answer: str, reason: str
) -> None:
    fake.reply(answer)
    result = generate(fake, tmp_path, request_for())
    assert result.candidate is None
    assert reason in (result.rejection or "")
    assert result.tokens_used == 812 + 240


def test_cut_off_answer_and_missing_model_are_rejections(fake: FakeOllama, tmp_path: Path) -> None:
    fake.reply(f"```python\n{IMPROVED[:40]}", done_reason="length")
    cut = generate(fake, tmp_path, request_for())
    assert cut.candidate is None and "cut off" in (cut.rejection or "")
    missing = generate(fake, tmp_path, request_for().model_copy(update={"model": "nope"}))
    assert missing.candidate is None and "refused" in (missing.rejection or "")


def test_test_files_are_refused_before_the_model_is_asked(fake: FakeOllama, tmp_path: Path) -> None:
    result = generate(fake, tmp_path, request_for(path="pkg/tests/test_calc.py"))
    assert result.candidate is None and "test file" in (result.rejection or "")
    assert fake.chats == []


def test_ollama_down_or_stalling_is_a_quick_rejection(fake: FakeOllama, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    down = Generator(settings_for(closed, tmp_path)).generate(request_for())
    assert down.candidate is None
    assert (down.rejection or "").startswith(f"ollama unreachable at {closed}")

    fake.reply(f"```python\n{IMPROVED}```", stall_seconds=5)
    slow = Generator(settings_for(fake.url, tmp_path, ollama_timeout_seconds=0.5)).generate(
        request_for()
    )
    assert slow.candidate is None and "ollama unreachable" in (slow.rejection or "")


def test_model_review_is_structured_and_merged(fake: FakeOllama, tmp_path: Path) -> None:
    review = {
        "findings": [
            {"line": 9, "kind": "reliability", "severity": "medium", "message": "None check by =="},
            {"line": 500, "kind": "documentation", "severity": "low", "message": "no docstrings"},
        ]
    }
    fake.reply(json.dumps(review))
    analyzer = Analyzer(settings_for(fake.url, tmp_path))
    request = AnalyzeRequest(
        file=SourceFile(path="pkg/calc.py", content=CALC), engine=EngineName.ollama
    )
    report = analyzer.analyze(request)
    model_findings = [f for f in report.findings if f.source is FindingSource.model]
    assert [f.location.line for f in model_findings] == [9, CALC.count("\n") + 1]
    assert {f.source for f in report.findings} == {FindingSource.ruff, FindingSource.model}
    assert report.tokens_used == 812 + 240 and report.notes == []
    assert fake.chats[0]["format"]["properties"]["findings"]["type"] == "array"
    static_only = Analyzer().analyze(request.model_copy(update={"engine": EngineName.static}))
    assert report.priority > static_only.priority

    fake.reply("this is not json")
    unusable = analyzer.analyze(request)
    assert unusable.notes and "model review unusable" in unusable.notes[0]
    assert [f.rule for f in unusable.findings] == [f.rule for f in static_only.findings]


def test_review_with_ollama_down_keeps_static_findings(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    request = AnalyzeRequest(
        file=SourceFile(path="pkg/calc.py", content=CALC), engine=EngineName.ollama
    )
    report = Analyzer(settings_for(closed, tmp_path)).analyze(request)
    assert report.error is None and report.findings
    assert "ollama unreachable" in report.notes[0]


def test_status_reports_version_and_models(fake: FakeOllama, tmp_path: Path) -> None:
    status = OllamaEngine(settings_for(fake.url, tmp_path)).status()
    assert status.reachable and status.version
    assert status.has_model("llama3") and not status.has_model("mistral")


def test_ollama_generator_over_http(fake: FakeOllama, tmp_path: Path) -> None:
    with serve_in_thread(create_app(Role.generator, settings_for(fake.url, tmp_path))) as url:
        generator = HttpGenerator(url)
        info = generator.info()
        assert info.engine is EngineName.ollama and "ollama" in info.capabilities
        fake.reply(f"```python\n{IMPROVED}```")
        result = generator.generate(request_for())
    assert result.candidate is not None and result.tokens_used == 812 + 240
