"""The ollama engine against a real `ollama serve` and a real small model (Gemma 3 270M).

The model is a base model, not an instruction-tuned one: its answers are real and
mostly poor, which is what these tests need. They check what must hold whatever it
says: the preflight, deadlines, stops, and that nothing unvalidated leaves the engine.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from tars_api.vocabulary import EngineName, Role
from tars_engine.core import python_ast
from tars_engine.core.diffs import apply_unified_diff
from tars_engine.core.models import (
    AnalyzeRequest,
    Finding,
    FindingKind,
    FindingSource,
    GenerateRequest,
    Location,
    ModelCheckRequest,
    Severity,
    SourceFile,
)
from tars_engine.core.settings import ReplicaSettings
from tars_engine.core.validation import defined_names
from tars_engine.replica import create_app
from tars_engine.roles.analyzer import Analyzer
from tars_engine.roles.generator import Generator
from tars_engine.roles.ollama_client import (
    AnswerCancelled,
    ContextTooSmall,
    ModelMissing,
    OllamaClient,
    OllamaError,
    OllamaUnreachable,
)
from tars_engine.roles.ollama_engine import MAX_REVIEW_FINDINGS
from tars_engine.transports.http_client import HttpGenerator
from tars_engine.transports.server import serve_in_thread

from tests.engine.fake_ollama import small_context_ollama
from tests.harness import ollama
from tests.harness.controlplane import free_port
from tests.harness.ollama import TEST_MODEL, OllamaServer
from tests.harness.projects import CALC

# Long enough for a generation that a stop or a killed server must interrupt.
LONG_ANSWER_TOKENS = 3000
STORY = [{"role": "user", "content": "Tell a very long story about a lighthouse keeper."}]


def settings_for(url: str, tmp_path: Path) -> ReplicaSettings:
    return ReplicaSettings(
        engine=EngineName.ollama, model=TEST_MODEL, ollama_host=url, scratch_dir=tmp_path
    )


def documentation_finding(line: int) -> Finding:
    return Finding(
        kind=FindingKind.documentation,
        severity=Severity.low,
        source=FindingSource.ruff,
        rule="D103",
        message="Missing docstring in public function",
        location=Location(line=line),
    )


def test_the_preflight_reads_the_context_and_measures_the_speed(
    ollama_server: OllamaServer, tmp_path: Path
) -> None:
    shown = httpx.post(f"{ollama_server.url}/api/show", json={"model": TEST_MODEL}).json()
    trained = next(v for k, v in shown["model_info"].items() if k.endswith(".context_length"))
    settings = settings_for(ollama_server.url, tmp_path)
    check = Generator(settings).check_model(ModelCheckRequest(model=TEST_MODEL))
    assert check.problem is None
    assert check.server_version == httpx.get(f"{ollama_server.url}/api/version").json()["version"]
    assert check.context_length == trained
    assert check.num_ctx == min(trained, settings.ollama_num_ctx)
    assert check.tokens_per_second and check.tokens_per_second > 0


def test_a_missing_model_is_one_line_naming_the_fix(
    ollama_server: OllamaServer, tmp_path: Path
) -> None:
    settings = settings_for(ollama_server.url, tmp_path)
    check = Generator(settings).check_model(ModelCheckRequest(model="no-such-model"))
    assert check.problem is not None and "\n" not in check.problem
    assert "ollama pull no-such-model" in check.problem


def test_a_stopped_server_is_one_line_before_any_work(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    check = Generator(settings_for(url, tmp_path)).check_model(ModelCheckRequest(model=TEST_MODEL))
    assert check.problem is not None and "\n" not in check.problem
    assert check.problem.startswith(f"no Ollama server answers at {url}")


def test_a_model_whose_context_is_too_small_is_refused(tmp_path: Path) -> None:
    # A fake server: the one model available here has a 32k context (see fake_ollama).
    with small_context_ollama(2048) as url, pytest.raises(ContextTooSmall, match="2048 tokens"):
        OllamaClient(url).preflight(TEST_MODEL, wanted_context=8192)


def test_an_answer_cut_off_by_its_token_limit_says_so(ollama_server: OllamaServer) -> None:
    client = OllamaClient(ollama_server.url)
    profile = client.preflight(TEST_MODEL, wanted_context=4096)
    answer = client.chat(profile, STORY, num_predict=8)
    assert answer.cut_off and answer.output_tokens == 8


def test_a_stop_cancels_the_request_in_flight(ollama_server: OllamaServer) -> None:
    client = OllamaClient(ollama_server.url)
    profile = client.preflight(TEST_MODEL, wanted_context=4096)
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    with pytest.raises(AnswerCancelled):
        client.chat(profile, STORY, num_predict=LONG_ANSWER_TOKENS, cancel=stop)
    # The server is free again: the cancelled generation does not hold it.
    assert client.chat(profile, STORY, num_predict=4).cut_off


def test_a_server_killed_mid_answer_is_an_error_not_a_hang(
    ollama_dir: Path, tmp_path: Path
) -> None:
    with ollama.running(ollama_dir, tmp_path / "serve.log") as server:
        client = OllamaClient(server.url)
        profile = client.preflight(TEST_MODEL, wanted_context=4096)
        threading.Timer(1.5, server.stop).start()
        with pytest.raises(OllamaError) as raised:
            client.chat(profile, STORY, num_predict=LONG_ANSWER_TOKENS)
    assert not isinstance(raised.value, AnswerCancelled)
    assert "\n" not in str(raised.value)


def test_whatever_the_model_answers_only_a_validated_change_leaves_the_generator(
    ollama_server: OllamaServer, tmp_path: Path
) -> None:
    source = SourceFile(path="pkg/calc.py", content=CALC)
    request = GenerateRequest(
        file=source,
        findings=[documentation_finding(5), documentation_finding(9)],
        targets=["pkg"],
        engine=EngineName.ollama,
        model=TEST_MODEL,
    )
    result = Generator(settings_for(ollama_server.url, tmp_path)).generate(request)
    assert result.tokens_used > 0, result.rejection
    if result.candidate is None:
        assert result.rejection and "\n" not in result.rejection
        return
    changed = apply_unified_diff(CALC, result.candidate.diff, source.path)
    assert defined_names(python_ast.parse(CALC)) <= defined_names(python_ast.parse(changed))
    assert result.candidate.model == TEST_MODEL


def test_the_review_is_bounded_and_merged_with_the_static_findings(
    ollama_server: OllamaServer, tmp_path: Path
) -> None:
    analyzer = Analyzer(settings_for(ollama_server.url, tmp_path))
    request = AnalyzeRequest(
        file=SourceFile(path="pkg/calc.py", content=CALC),
        engine=EngineName.ollama,
        model=TEST_MODEL,
    )
    report = analyzer.analyze(request)
    static = Analyzer(settings_for(ollama_server.url, tmp_path)).analyze(
        AnalyzeRequest(file=request.file)
    )
    assert report.tokens_used > 0, report.notes
    model = [f for f in report.findings if f.source is FindingSource.model]
    assert len(model) <= MAX_REVIEW_FINDINGS
    assert all(1 <= f.location.line <= CALC.count("\n") + 1 for f in model)
    assert [f for f in report.findings if f.source is not FindingSource.model] == static.findings


def test_the_generator_checks_its_model_and_cancels_over_http(
    ollama_server: OllamaServer, tmp_path: Path
) -> None:
    settings = settings_for(ollama_server.url, tmp_path)
    with serve_in_thread(create_app(Role.generator, settings)) as url:
        generator = HttpGenerator(url)
        check = generator.check_model(ModelCheckRequest(model=TEST_MODEL))
        assert check.problem is None and check.num_ctx
        missing = generator.check_model(ModelCheckRequest(model="no-such-model"))
        assert missing.problem and "ollama pull" in missing.problem
        generator.cancel_generation("not-running")


def test_an_unreachable_server_during_a_run_is_a_rejection_not_a_crash(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    request = GenerateRequest(
        file=SourceFile(path="pkg/calc.py", content="def f():\n    return 1\n"),
        findings=[documentation_finding(1)],
        targets=["pkg"],
        engine=EngineName.ollama,
        model=TEST_MODEL,
    )
    result = Generator(settings_for(url, tmp_path)).generate(request)
    assert result.candidate is None and result.rejection
    assert f"no Ollama server answers at {url}" in result.rejection
    assert "\n" not in result.rejection


def test_missing_model_and_unreachable_errors_are_typed(
    ollama_server: OllamaServer,
) -> None:
    with pytest.raises(ModelMissing):
        OllamaClient(ollama_server.url).context_length("no-such-model")
    with pytest.raises(OllamaUnreachable):
        OllamaClient(f"http://127.0.0.1:{free_port()}").version()


def test_answers_already_given_are_not_asked_again(
    ollama_server: OllamaServer, tmp_path: Path
) -> None:
    source = SourceFile(path="pkg/calc.py", content=CALC)
    request = GenerateRequest(
        file=source,
        findings=[documentation_finding(5)],
        targets=["pkg"],
        engine=EngineName.ollama,
        model=TEST_MODEL,
    )
    settings = settings_for(ollama_server.url, tmp_path)
    first = Generator(settings).generate(request)
    # A new generator, as after a restart, with the same scratch directory.
    again = Generator(settings).generate(request)
    assert first.tokens_used > 0 and again.tokens_used == 0
    assert (again.candidate, again.rejection) == (first.candidate, first.rejection)


def test_an_edit_task_on_a_larger_file_is_asked_under_a_schema_the_server_takes(
    ollama_server: OllamaServer, tmp_path: Path
) -> None:
    helpers = "".join(f"\n\ndef helper_{n}(x):\n    return x + {n}\n" for n in range(15))
    content = CALC + helpers
    line = next(n for n, text in enumerate(content.splitlines(), 1) if "def helper_3" in text)
    request = GenerateRequest(
        file=SourceFile(path="pkg/calc.py", content=content),
        findings=[documentation_finding(line)],
        targets=["pkg"],
        engine=EngineName.ollama,
        model=TEST_MODEL,
    )
    result = Generator(settings_for(ollama_server.url, tmp_path)).generate(request)
    # The model answered (well or not): Ollama did not refuse the edit schema.
    assert result.tokens_used > 0, result.rejection
    assert "refused" not in (result.rejection or ""), result.rejection
