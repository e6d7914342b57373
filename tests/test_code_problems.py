"""Code problems from doctests (data/code_problems.py): what a prompt shows, and that the check really runs the
docstring's examples against the model's function."""

import ast

import pytest

from stitchllm.data.code_problems import _absolute_import, candidate_problems
from stitchllm.eval.execution import check_completions


@pytest.fixture(scope="module")
def problems():
    return {p["task_id"]: p for p in candidate_problems()}


def test_relative_imports_become_absolute():
    node = ast.parse("from .recipes import take, consume").body[0]
    assert _absolute_import("more_itertools/more.py", node) == "from more_itertools.recipes import take, consume"
    node = ast.parse("from ..utils import x").body[0]
    assert _absolute_import("stdlib/email/mime/text.py", node) == "from email.utils import x"
    node = ast.parse("import os.path as p").body[0]
    assert _absolute_import("stdlib/shutil.py", node) == "import os.path as p"


def test_prompt_is_header_and_docstring_without_the_body(problems):
    p = problems["stdlib/statistics.py:median"]
    assert p["entry_point"] == "median" and p["split"] in ("train", "validation", "heldout")
    assert p["prompt"].rstrip().endswith('"""') and "def median(data):" in p["prompt"]
    assert ">>> median([1, 3, 5])" in p["prompt"]  # the examples are shown, as in HumanEval
    assert "return" not in p["prompt"].split("def median", 1)[1].split('"""')[-1]
    assert "from statistics import" not in p["prompt"]  # never the module the function comes from


def test_check_runs_the_examples_against_the_candidate(problems):
    p = problems["stdlib/statistics.py:median"]
    right = p["canonical_solution"]
    wrong = "    return sorted(data)[0]\n"  # the minimum: fails median([1, 3, 5]) == 3
    redefined = "\ndef median(data):\n    data = sorted(data)\n    n = len(data)\n" \
                "    return data[n // 2] if n % 2 else (data[n // 2 - 1] + data[n // 2]) / 2\n"
    results = check_completions([p, p, p], [right, wrong, redefined], timeout=5.0, workers=2)
    assert [r.passed for r in results] == [True, False, True]
    assert results[1].result == "failed: AssertionError: 2 of 2 examples failed"
