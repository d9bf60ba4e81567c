"""The edit protocol: tasks a small model can follow, and lenient reading of its answers.

These read answers written here as a small model writes them (fences, copied line
numbers, indentation that is off): parsing is what is tested, not a server.
"""

from __future__ import annotations

import textwrap

import pytest
from tars_engine.core import python_ast
from tars_engine.core.models import Finding, FindingKind, FindingSource, Location, Severity
from tars_engine.core.validation import defined_names, only_whitespace_changed
from tars_engine.roles.edit_protocol import (
    WHOLE_FILE_MAX_LINES,
    EditAnswer,
    EditError,
    SearchReplace,
    Task,
    WholeFileAnswer,
    apply_edits,
    numbered,
    parse_answer,
    plan_tasks,
    whole_file,
)
from tars_engine.roles.generator import moved_findings

HEAD = '"""Shop totals."""\n\nimport math\n\nRATE = 0.2\n\n\n'
TOTAL = textwrap.dedent(
    """\
    class Cart:
        def total(self, prices):
            result = 0
            for price in prices:
                result = result + price
            return result

        def taxed(self, prices):
            return self.total(prices) * (1 + RATE)
    """
)
# Long enough that the planner works by region instead of asking for the whole file.
FILLER = "".join(f"\n\ndef helper_{n}(x):\n    return x + {n}\n" for n in range(20))
SOURCE = HEAD + TOTAL + FILLER


def finding(line: int, rule: str = "D102") -> Finding:
    return Finding(
        kind=FindingKind.documentation,
        severity=Severity.info,
        source=FindingSource.ruff,
        rule=rule,
        message="Missing docstring",
        location=Location(line=line),
    )


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def test_a_finding_in_a_method_becomes_a_task_of_that_method_alone() -> None:
    taxed = line_of(SOURCE, "def taxed")
    [task] = plan_tasks(SOURCE, [finding(taxed)])
    assert (task.first, task.last) == (taxed, taxed + 1)
    assert not task.whole_file


def test_the_module_head_is_a_region_and_tasks_never_overlap() -> None:
    total = line_of(SOURCE, "def total")
    tasks = plan_tasks(SOURCE, [finding(1, "D100"), finding(total), finding(total + 1)])
    assert [(t.first, t.last) for t in tasks] == [
        (1, line_of(SOURCE, "class Cart") - 1),
        (total, total + 4),
    ]
    assert [len(t.findings) for t in tasks] == [1, 2]


def test_a_small_file_is_one_whole_file_task() -> None:
    small = HEAD + TOTAL
    assert len(small.splitlines()) <= WHOLE_FILE_MAX_LINES
    [task] = plan_tasks(small, [finding(3)])
    assert task.whole_file and (task.first, task.last) == (1, len(small.splitlines()))


def test_the_region_is_shown_with_line_numbers() -> None:
    shown = numbered(SOURCE, 9, 10).splitlines()
    assert shown == [" 9|     def total(self, prices):", "10|         result = 0"]


def edit_task() -> Task:
    total = line_of(SOURCE, "def total")
    return Task(total, total + 4, (finding(total),), whole_file=False)


def answer(search: str, replace: str) -> EditAnswer:
    return EditAnswer(explanation="x", edits=[SearchReplace(search=search, replace=replace)])


DOCSTRING = '        """The sum of `prices`."""\n'


def test_an_exact_edit_is_made_where_it_was_found() -> None:
    search = "    def total(self, prices):\n        result = 0"
    replace = "    def total(self, prices):\n" + DOCSTRING + "        result = 0"
    new = apply_edits(SOURCE, edit_task(), answer(search, replace))
    assert DOCSTRING in new and new.count("def total") == 1
    python_ast.parse(new)


@pytest.mark.parametrize(
    "search",
    [
        # copied with the line numbers it was shown with
        "9|     def total(self, prices):\n10|         result = 0",
        # fenced, the language capitalised, the closing fence missing
        "```Python\n    def total(self, prices):\n        result = 0",
        # trailing spaces the file does not have
        "    def total(self, prices):   \n        result = 0  ",
    ],
)
def test_what_small_models_get_wrong_without_meaning_it_is_forgiven(search: str) -> None:
    replace = "    def total(self, prices):\n" + DOCSTRING + "        result = 0"
    new = apply_edits(SOURCE, edit_task(), answer(search, replace))
    assert DOCSTRING in new
    python_ast.parse(new)


def test_indentation_off_by_one_amount_is_shifted_back() -> None:
    search = "def total(self, prices):\n    result = 0"
    replace = 'def total(self, prices):\n    """The sum of `prices`."""\n    result = 0'
    new = apply_edits(SOURCE, edit_task(), answer(search, replace))
    assert DOCSTRING in new
    python_ast.parse(new)


def test_a_search_text_that_is_not_there_is_an_error() -> None:
    with pytest.raises(EditError, match="not in the region"):
        apply_edits(SOURCE, edit_task(), answer("def nowhere():\n    pass", "x = 1"))


def test_an_answer_wrapped_in_prose_is_still_read() -> None:
    text = 'Sure! Here you go:\n```json\n{"explanation": "doc", "content": "x = 1\\n"}\n```'
    parsed = parse_answer(text, WholeFileAnswer)
    assert parsed.content == "x = 1\n"
    with pytest.raises(EditError, match="EditAnswer format"):
        parse_answer('{"explanation": "nothing to edit", "edits": []}', EditAnswer)


def test_a_whole_file_answer_loses_its_fence_and_keeps_the_final_newline() -> None:
    fenced = WholeFileAnswer(explanation="x", content="```python\nRATE = 0.25\n```")
    assert whole_file("RATE = 0.2\n", fenced) == "RATE = 0.25\n"


def test_names_and_layout_that_validation_guards() -> None:
    names = defined_names(python_ast.parse(SOURCE))
    assert {"RATE", "Cart", "Cart.total", "Cart.taxed", "helper_0"} <= names
    assert "math" not in names
    assert only_whitespace_changed(SOURCE, SOURCE.replace("result = 0", "result  =  0"))
    assert not only_whitespace_changed(SOURCE, SOURCE.replace("result = 0", "result = 0  # sum"))


def test_findings_follow_their_lines_after_the_static_fixes() -> None:
    before = "import os\nimport sys\n\n\ndef add(a, b):\n    return a + b\n"
    after = "\n\ndef add(a, b):\n    return a + b\n"
    moved = moved_findings([finding(5), finding(6)], before, after)
    assert [f.location.line for f in moved] == [3, 4]
