"""TARS's codemods: `-> None` and `-> bool` where the body makes them certain.

The sites are found in real source text and the edits checked byte for byte; the
project's say is asked of real ruff with the project's configuration written to disk;
the last test is a whole run on a real git repository whose own tests gate the codemods.
"""

from __future__ import annotations

import inspect
import runpy
import textwrap
from pathlib import Path

from tars_api.run import RunPhase
from tars_api.vocabulary import EngineName
from tars_engine.core.diffs import apply_unified_diff
from tars_engine.core.learning import LearningStore
from tars_engine.core.models import (
    AnalyzeRequest,
    GenerateRequest,
    GenerateResult,
    SourceFile,
)
from tars_engine.core.ruff_config import lint_context
from tars_engine.core.selection import actionable_findings
from tars_engine.roles.analyzer import Analyzer
from tars_engine.roles.codemods import (
    BOOL_RETURN,
    NONE_RETURN,
    apply_sites,
    candidate_sites,
    fix,
    project_sites,
)
from tars_engine.roles.generator import Generator

from tests.harness.projects import write_tree
from tests.harness.tools import git, git_init
from tests.harness.workflow import isolated_roles, learning, project_tests_pass, run_workflow

__all__ = ["isolated_roles", "learning"]


def annotated(content: str, path: str = "pkg/m.py") -> str:
    return apply_sites(content, candidate_sites(path, content))


def rules_by_function(content: str) -> dict[str, str]:
    return {site.function: site.rule.code for site in candidate_sites("pkg/m.py", content)}


def test_a_function_without_a_value_gets_none_and_one_of_booleans_gets_bool() -> None:
    content = textwrap.dedent(
        """\
        def show(value):
            print(value)
            return


        def positive(value):
            if value > 0:
                return True
            return not value or isinstance(value, bool) and value is None
        """
    )
    assert annotated(content) == content.replace("show(value):", "show(value) -> None:").replace(
        "positive(value):", "positive(value) -> bool:"
    )
    sites = candidate_sites("pkg/m.py", content)
    assert [(site.rule, site.line, site.column) for site in sites] == [
        (NONE_RETURN, 1, 5),
        (BOOL_RETURN, 6, 5),
    ]


def test_multi_line_signatures_with_colons_lambdas_and_comments() -> None:
    content = textwrap.dedent(
        """\
        def configure(
            mapping={"key": "value"},  # a comment: with a colon (and a parenthesis
            key=lambda item: item[1:],
            *,
            flag: bool = False,
        ):  # the end of the signature
            mapping.update(flag=flag, key=key)


        def one_line(x=dict(a=1)): print(x)
        """
    )
    assert annotated(content) == content.replace(
        "\n):  # the end", "\n) -> None:  # the end"
    ).replace("one_line(x=dict(a=1)):", "one_line(x=dict(a=1)) -> None:")


def test_crlf_bom_and_every_other_byte_are_kept() -> None:
    lines = ["# -*- coding: utf-8 -*-", "def é(a,", "      b):  # ünïcode", "    print(a, b)", ""]
    content = "\ufeff" + "\r\n".join(lines)
    assert annotated(content) == content.replace("b):", "b) -> None:")
    # A lone carriage return ends a line for `ast` but not for `tokenize`: left alone.
    assert candidate_sites("pkg/m.py", "def f():\r    print(1)\r") == []


def test_generators_placeholders_raisers_and_values_are_left_alone() -> None:
    content = textwrap.dedent(
        """\
        import abc


        def numbers():
            yield 1


        async def stream():
            yield 2


        def delegate():
            yield from numbers()


        def hook(self):
            '''Subclasses decide.'''


        def stub():
            ...


        def abstract():
            raise NotImplementedError


        def value():
            return 3


        def explicit_none():
            return None


        def maybe(flag):
            if flag:
                return True


        def mixed(flag):
            if flag:
                return True
            return "no"


        def rich(flag):
            return flag == 1


        class Base(abc.ABC):
            @abc.abstractmethod
            def run(self):
                print(self)
        """
    )
    assert rules_by_function(content) == {"rich": BOOL_RETURN.code}


def test_decorators_other_than_the_transparent_ones_are_left_alone() -> None:
    content = textwrap.dedent(
        """\
        import functools


        class Account:
            @property
            def closed(self):
                return self.balance is None

            @closed.setter
            def closed(self, value):
                self.balance = None if value else 0

            @staticmethod
            def log(message):
                print(message)

            @classmethod
            def reset(cls):
                cls.count = 0

            @functools.cache
            def cached(self):
                print(self)

            @register
            def plugin(self):
                print(self)
        """
    )
    assert [(s.function, s.rule.code, s.line) for s in candidate_sites("pkg/m.py", content)] == [
        ("closed", BOOL_RETURN.code, 6),
        ("closed", NONE_RETURN.code, 10),
        ("log", NONE_RETURN.code, 14),
        ("reset", NONE_RETURN.code, 18),
    ]


def test_nested_functions_methods_and_async_are_judged_each_on_their_own() -> None:
    content = textwrap.dedent(
        """\
        class Server:
            def __init__(self):
                self.ready = False

            async def start(self):
                def numbers():
                    yield 1

                async def check():
                    return all(numbers())

                self.ready = await check()

            def collect(self):
                def keep(item):
                    return item > 0

                return list(filter(keep, [1, 2]))
        """
    )
    assert rules_by_function(content) == {
        "__init__": NONE_RETURN.code,
        "start": NONE_RETURN.code,
        "check": BOOL_RETURN.code,
        "keep": BOOL_RETURN.code,
    }


def test_existing_annotations_type_comments_and_shadowed_builtins_are_left_alone() -> None:
    content = textwrap.dedent(
        """\
        def done() -> None:
            print("done")


        def legacy(a):
            # type: (int) -> None
            print(a)
        """
    )
    assert candidate_sites("pkg/m.py", content) == []
    shadowing = "bool = int\n\n\ndef check(a):\n    return a is None\n"
    assert candidate_sites("pkg/m.py", shadowing) == []
    own_isinstance = "from checks import isinstance\n\n\ndef check(a):\n    return isinstance(a)\n"
    assert candidate_sites("pkg/m.py", own_isinstance) == []


def test_tests_stubs_and_unparsable_files_have_no_sites() -> None:
    content = "def show(value):\n    print(value)\n"
    assert candidate_sites("pkg/m.py", content)
    for path in ("tests/test_m.py", "pkg/m_test.py", "conftest.py", "pkg/m.pyi"):
        assert candidate_sites(path, content) == [], path
    assert candidate_sites("pkg/m.py", "def show(value:\n") == []


def test_the_annotated_code_runs_and_its_annotations_are_the_certain_ones(tmp_path: Path) -> None:
    content = textwrap.dedent(
        """\
        def show(value):
            print(value)


        def small(value):
            return value < 10 and not value < 0
        """
    )
    module = tmp_path / "annotated_module.py"
    module.write_text(annotated(content))
    namespace = runpy.run_path(str(module))
    assert inspect.signature(namespace["show"]).return_annotation is None
    assert inspect.signature(namespace["small"]).return_annotation is bool


def project_source(root: Path, path: str) -> SourceFile:
    content = (root / path).read_bytes().decode("utf-8")
    return SourceFile(path=path, content=content, lint=lint_context(root, path))


SHOW = "def show(value):\n    print(value)\n\n\ndef _hidden(value):\n    print(value)\n"


def test_the_projects_ignores_of_the_ann_rules_hold(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "pyproject.toml": textwrap.dedent(
                """\
                [tool.ruff.lint]
                ignore = ["ANN201"]
                per-file-ignores = {"pkg/quiet.py" = ["ANN2"]}
                """
            ),
            "pkg/__init__.py": "",
            "pkg/loud.py": SHOW + "\n\ndef _noisy(value):  # noqa: ANN202\n    print(value)\n",
            "pkg/quiet.py": SHOW,
        },
    )
    # ANN201 (public) is ignored, ANN202 (private) is not, except where a noqa says so.
    loud = project_source(tmp_path, "pkg/loud.py")
    assert [site.function for site in project_sites(loud)] == ["_hidden"]
    assert fix(loud, [NONE_RETURN.code]) == loud.content.replace(
        "_hidden(value):", "_hidden(value) -> None:"
    )
    assert project_sites(project_source(tmp_path, "pkg/quiet.py")) == []


def test_the_projects_flake8_annotations_options_hold(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "ruff.toml": "[lint.flake8-annotations]\nsuppress-none-returning = true\n",
            "m.py": SHOW + "\n\ndef empty(text):\n    return not text\n",
        },
    )
    # The project lets a function that returns nothing go without `-> None`.
    sites = project_sites(project_source(tmp_path, "m.py"))
    assert [(site.function, site.rule) for site in sites] == [("empty", BOOL_RETURN)]


def test_a_project_that_chose_its_rules_gets_codemods_only_for_the_ann_rules_it_chose(
    tmp_path: Path,
) -> None:
    write_tree(
        tmp_path,
        {
            "chose/pyproject.toml": '[tool.ruff.lint]\nselect = ["E", "F"]\n',
            "chose/m.py": SHOW,
            "annotations/pyproject.toml": '[tool.ruff.lint]\nselect = ["F", "ANN202"]\n',
            "annotations/m.py": SHOW,
        },
    )
    assert project_sites(project_source(tmp_path, "chose/m.py")) == []
    chosen = project_sites(project_source(tmp_path, "annotations/m.py"))
    assert [site.function for site in chosen] == ["_hidden"]


def generate(content: str) -> GenerateResult:
    source = SourceFile(path="pkg/m.py", content=content)
    report = Analyzer().analyze(AnalyzeRequest(file=source))
    findings = actionable_findings(report, EngineName.static, allow_unsafe=False)
    return Generator().generate(GenerateRequest(file=source, findings=findings, targets=["pkg"]))


def test_the_static_engine_applies_codemods_and_ruffs_fixes_in_one_candidate() -> None:
    content = "import os\r\n\r\n\r\ndef show(value):\r\n    print(value)\r\n"
    result = generate(content)
    assert result.candidate is not None, result.rejection
    assert result.candidate.rules == ["F401", NONE_RETURN.code]
    assert f"- {NONE_RETURN.code} (1 fixed): `show` returns no value" in result.candidate.rationale
    after = apply_unified_diff(content, result.candidate.diff, "pkg/m.py")
    assert after == "\r\n\r\ndef show(value) -> None:\r\n    print(value)\r\n"

    # With nothing for ruff to fix, the codemod alone makes the candidate.
    alone = generate("def show(value):\n    print(value)\n")
    assert alone.candidate is not None and alone.candidate.rules == [NONE_RETURN.code]


# A plugin registry that reads its plugins' annotations: an annotation changes what it
# does, which only the project's tests can tell.
GATED_FILES = {
    "pyproject.toml": '[project]\nname = "gated"\nrequires-python = ">=3.8"\n',
    "gated/__init__.py": "",
    "gated/report.py": textwrap.dedent(
        """\
        def emit(lines, out):
            for line in lines:
                out.append(line)


        def is_blank(line):
            return not line.strip()
        """
    ),
    "gated/plugins.py": textwrap.dedent(
        """\
        import inspect

        REGISTRY = []


        def register(function):
            returns = inspect.signature(function).return_annotation
            REGISTRY.append((function.__name__, returns is inspect.Signature.empty))
            return function


        def setup(registry):
            registry.append("setup")


        register(setup)
        """
    ),
    "tests/test_gated.py": textwrap.dedent(
        """\
        from gated import plugins, report


        def test_report():
            out = []
            report.emit(["a", " "], out)
            assert out == ["a", " "]
            assert report.is_blank(" ") and not report.is_blank("a")


        def test_plugins_are_registered_unannotated():
            assert plugins.REGISTRY == [("setup", True)]
        """
    ),
}


def test_a_run_commits_the_annotations_the_projects_tests_let_through(
    tmp_path: Path, learning: LearningStore
) -> None:
    root = git_init(write_tree(tmp_path / "gated", GATED_FILES))
    before = (root / "gated/plugins.py").read_bytes()

    state = run_workflow(root, learning, targets=["gated"], auto_apply=True)

    assert state.phase is RunPhase.succeeded, state.message
    assert [change.path for change in state.applied] == ["gated/report.py"]
    [commit] = [change.commit for change in state.applied]
    assert commit is not None
    committed = git(root, "show", "--format=", commit)
    assert "+def emit(lines, out) -> None:" in committed
    assert "+def is_blank(line) -> bool:" in committed
    # The registry reads annotations: its tests fail with `-> None` on `setup`.
    assert (root / "gated/plugins.py").read_bytes() == before
    assert project_tests_pass(root)
    records = learning.rule_records()
    assert records[NONE_RETURN.code].accepted == 1 < records[NONE_RETURN.code].total
    assert records[BOOL_RETURN.code].accepted == 1
