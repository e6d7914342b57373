"""HumanEval: the sandboxed checker, chat-answer post-processing, the engine-batched run and `eval --task humaneval`."""

import json
import os
import subprocess
import sys
import time

import pytest

from stitchllm.eval.humaneval import (AnswerWatch, answer_end, completion_from_text, extract_code,
                                      load_problems)


@pytest.fixture(scope="module")
def problems():
    return load_problems()


@pytest.fixture(scope="module")
def tiny_pair(tiny_parent_dir, tiny_small_dir, tmp_path_factory):
    """The two-route catalog (stitches looked up under an empty STITCHLLM_HOME: none)."""
    from stitchllm.routing.catalog import load_catalog

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STITCHLLM_HOME", str(tmp_path_factory.mktemp("home")))
        catalog = load_catalog(str(tiny_parent_dir), str(tiny_small_dir))
    assert [r.name for r in catalog.routes] == ["small", "large"]
    return catalog


def test_problems_come_from_the_wheel(problems):
    assert len(problems) == 164
    assert [p["task_id"] for p in problems[:2]] == ["HumanEval/0", "HumanEval/1"]
    assert problems[0]["entry_point"] == "has_close_elements"
    assert [p["task_id"] for p in load_problems(3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]


def test_checker_passes_right_code_and_fails_wrong_loops_and_crashes(problems):
    """One batch through the worker processes: the canonical solution passes, a wrong body fails on its assert,
    an infinite loop times out (within timeout + the 1 s grace), a hard exit and a syntax error fail."""
    from stitchllm.eval.execution import PASSED, TIMED_OUT, check_completions

    p0, p1 = problems[0], problems[1]
    completions = [p0["canonical_solution"], "    return False\n", "    while True:\n        pass\n",
                   "    import os\n    os._exit(0)\n", "    return [\n", p1["canonical_solution"]]
    start = time.monotonic()
    results = check_completions([p0, p0, p0, p0, p0, p1], completions, timeout=1.0, workers=2)
    elapsed = time.monotonic() - start
    assert [r.result for r in results] == [PASSED, "failed: AssertionError: ", TIMED_OUT,
                                           "failed: exited without a result", results[4].result, PASSED]
    assert results[4].result.startswith("failed: SyntaxError")
    assert [r.passed for r in results] == [True, False, False, False, False, True]
    assert elapsed < 6.0  # the loop costs ~1 s on one worker while the other five share the second


def test_generated_code_runs_in_another_process(problems, tmp_path):
    """A completion that records its pid and whether the harness's reliability_guard disabled os.system: another
    process, guarded."""
    from stitchllm.eval.execution import check_completions

    marker = tmp_path / "where.txt"
    body = (f"    import os\n    open({str(marker)!r}, 'w').write(f'{{os.getpid()}} {{os.system}}')\n"
            + problems[0]["canonical_solution"])
    assert check_completions([problems[0]], [body], timeout=5.0)[0].passed
    pid, system = marker.read_text().split(" ", 1)
    assert int(pid) != os.getpid() and system == "None"


WHOLE = '''Here is the function:

```python
from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])
```

It compares every pair.'''
BODY = "```python\nreturn any(abs(a - b) < threshold\n           for i, a in enumerate(numbers) for b in numbers[i + 1:])\n```"


def test_chat_answers_become_completions_that_pass(problems):
    """Whole function (redefines the prompt's) and body only (indented into it) both pass; prose is dropped."""
    from stitchllm.eval.execution import check_completions

    p0 = problems[0]
    code = extract_code(WHOLE, "has_close_elements")
    assert code.startswith("from typing import List") and "It compares" not in code
    whole = completion_from_text(WHOLE, p0, "chat")
    assert whole.startswith("\nfrom typing import List") and whole.endswith("numbers[i + 1:])\n")
    body = completion_from_text(BODY, p0, "chat")
    assert body == ("    return any(abs(a - b) < threshold\n"
                    "               for i, a in enumerate(numbers) for b in numbers[i + 1:])\n")
    wrong = completion_from_text("```python\nreturn True\n```", p0, "chat")
    assert [r.passed for r in check_completions([p0] * 3, [whole, body, wrong], timeout=5.0)] == [True, True, False]


def test_extraction_prefers_the_block_defining_the_function():
    answer = "```bash\npip install x\n```\n```python\nprint(1)\n```\n```python\ndef f(x):\n    return x\n```"
    assert extract_code(answer, "f") == "def f(x):\n    return x\n"
    assert extract_code(answer, "g") == "print(1)\n"  # no block defines g: the first Python one
    assert extract_code("def f(x):\n    return x", "f") == "def f(x):\n    return x"  # bare code
    assert extract_code("```python\ndef f(x):\n    return x", "f") == "def f(x):\n    return x"  # cut short


def test_answers_end_at_stop_sequences_or_the_first_closed_block():
    body = "    return 1\n\n\ndef other():\n    pass\n"
    assert answer_end(body, "completion") == body.index("\ndef other")
    assert answer_end("    x = 1\n#\n", "completion") == len("    x = 1")
    assert answer_end("    return [x for x in y]\n", "completion") is None
    assert answer_end("Sure:\n```python\ndef f():\n    return 1\n", "chat") is None
    text = "Sure:\n```python\ndef f():\n    return 1\n```\nThis works."
    assert answer_end(text, "chat") == text.index("\nThis works")


def test_answer_watch_fires_on_the_token_that_closes_the_block(smollm2):
    _, tokenizer, _ = smollm2
    text = "Sure:\n```python\ndef f():\n    return 1\n```\nThis works."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    watch = AnswerWatch(tokenizer, "chat")
    fired = next(k for k, t in enumerate(ids) if watch.add([t]))
    assert tokenizer.decode(ids[: fired + 1]).endswith("```") and not tokenizer.decode(ids[:fired]).endswith("```")


def test_routes_and_a_policy_run_batched_through_the_engine(tiny_pair):
    """Two problems on two routes and the random policy; the engine's greedy tokens equal the route's own greedy
    decode (the watch may cut an answer short, never change it)."""
    from stitchllm.eval.humaneval_run import HumanEvalConfig, run_humaneval
    from stitchllm.generation import generate
    from stitchllm.prompting import encode_prompt
    from stitchllm.sampling import SamplingParams

    catalog = tiny_pair
    cfg = HumanEvalConfig(prompt_format="completion", max_new_tokens=6, limit=2, timeout_s=5.0, kv_budget_mb=64)
    report, samples = run_humaneval(catalog, None, ["small", "large"], ["random"], cfg)
    assert report["task"] == "humaneval" and report["prompt_format"] == "completion"
    rows = report["routes"]
    assert [r["name"] for r in rows] == ["small", "large", "random"]
    assert rows[1]["cost"] == 1.0 and rows[0]["cost"] == round(catalog.relative_cost(catalog.route("small")), 4)
    for r in rows:
        assert r["n"] == 2 and r["pass@1"] == 0.0 and 1.0 <= r["mean_output_tokens"] <= 6.0 and r["wall_s"] > 0
    assert sum(rows[2]["route_mix"].values()) == pytest.approx(1.0)
    assert [s["task_id"] for s in samples] == ["HumanEval/0", "HumanEval/1"] * 3
    assert all(s["result"] and not s["passed"] for s in samples)
    problems = load_problems(2)
    tokenizer = catalog.family.tokenizer
    for s, p in zip(samples[2:4], problems):  # the large route
        ids = encode_prompt(tokenizer, p["prompt"], chat=False, context=1024)
        out = []
        generate(catalog.executor.last_logits(catalog.route("large"), 1, len(ids) + 6), [ids],
                 SamplingParams(max_tokens=s["output_tokens"]), set(), on_token=lambda _, t: out.append(t))
        assert s["text"] == tokenizer.decode(out, skip_special_tokens=True)
        assert s["completion"] == completion_from_text(s["text"], p, "completion")


def test_cli_eval_humaneval_prints_the_json_report(tiny_parent_dir, tiny_small_dir, tmp_path):
    samples = tmp_path / "samples.jsonl"
    env = os.environ | {"STITCHLLM_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "stitchllm.cli", "eval", "--task", "humaneval", "--model", str(tiny_parent_dir),
         "--small", str(tiny_small_dir), "--routes", "large,small", "--policy", "random",
         "--limit", "2", "--max-new-tokens", "4", "--matmul-dtype", "float32", "--samples", str(samples),
         "--json"], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert set(report) == {"task", "prompt_format", "routes"}
    assert report["task"] == "humaneval" and report["prompt_format"] == "chat"
    assert [r["name"] for r in report["routes"]] == ["small", "large", "random"]
    fields = {"name", "cost", "pass@1", "n", "mean_output_tokens", "wall_s"}
    for r in report["routes"]:
        assert set(r) == fields | ({"route_mix", "pass@1_by_route"} if r["name"] == "random" else set())
        assert r["n"] == 2 and r["pass@1"] == 0.0 and 1 <= r["mean_output_tokens"] <= 4
    assert set(report["routes"][2]["route_mix"]) <= {"small", "large"}
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [(r["name"], r["task_id"]) for r in rows] == [
        (name, f"HumanEval/{i}") for name in ("small", "large", "random") for i in (0, 1)]
    assert all(r["passed"] is False for r in rows)


def test_cli_eval_text_still_needs_text():
    result = subprocess.run([sys.executable, "-m", "stitchllm.cli", "eval", "--model", "x", "--small", "y"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--task text needs --text" in result.stderr


def test_bench_pass_at_1_checks_what_was_served(smollm2, problems):
    """Served answers decoded, cut and checked, each problem weighing the same: problem 0 right once and wrong once
    (1/2), problem 1 right (1) make 3/4; a repeat is not re-run."""
    from stitchllm.bench.driver import Record
    from stitchllm.bench.humaneval import HumanEvalWorkload

    _, tokenizer, _ = smollm2
    work = HumanEvalWorkload(tokenizer, "completion", context=2048, timeout_s=5.0)
    assert len(work.requests) == 164 and work.requests[1].prompt == tokenizer(problems[1]["prompt"])["input_ids"]

    def served(i: int, text: str) -> Record:
        return Record(work.requests[i], 0.0, [0.0], output_ids=tokenizer(text, add_special_tokens=False)["input_ids"])

    right0 = problems[0]["canonical_solution"] + "\n\ndef check_more():\n    pass\n"  # cut at the stop
    records = [served(0, right0), served(1, problems[1]["canonical_solution"]), served(0, "    return True\n"),
               Record(work.requests[2], 0.0)]  # never served: not counted
    assert work.pass_at_1(records) == pytest.approx(3 / 4)
    assert work.pass_at_1(records[2:3] + records[1:2] * 5) == pytest.approx(1 / 2)  # repeats do not outweigh
    assert work.problems_served(records) == 2 and len(work._passed) == 3
    assert work.pass_at_1(records[:1] * 4) == 1.0 and len(work._passed) == 3
    assert work.pass_at_1([records[3]]) is None


def test_cli_bench_humaneval_reports_pass_at_1(tiny_parent_dir, tiny_small_dir, tmp_path):
    env = os.environ | {"STITCHLLM_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "stitchllm.cli", "bench", "--workload", "humaneval", "--prompt-format", "completion",
         "--model", str(tiny_parent_dir), "--small", str(tiny_small_dir), "--policies", "large,random",
         "--rates", "4", "--duration", "1", "--saturation-duration", "0.2", "--output-tokens", "4",
         "--concurrency", "4", "--matmul-dtype", "float32", "--json"],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert [r["policy"] for r in report["results"]] == ["large", "random"]
    for r in report["results"] + report["saturation_detail"]:
        assert r["requests"] > 0 and r["pass_at_1"] == 0.0 and r["quality_top1"] is None
        assert 0 < r["problems"] <= r["requests"]
    large = report["saturation_quality"]["large"]  # paired with itself: the problems it served
    assert large == {"ppl": None, "top1": None, "pass_at_1": 0.0, "paired_pass_at_1": 0.0,
                     "paired_large_pass_at_1": 0.0, "paired_problems": large["paired_problems"]}
    assert large["paired_problems"] == report["saturation_detail"][0]["problems"]
    assert report["peers"] == [] and report["config"]["workload"] == "humaneval"
    assert report["config"]["prompt_tokens"] == max(
        len(p) for p in _completion_prompts(tiny_parent_dir))  # the longest prompt sizes the engine


def _completion_prompts(model_dir):
    from stitchllm.models.loader import load_config, load_tokenizer

    tokenizer = load_tokenizer(model_dir, load_config(model_dir).vocab_size)
    return [tokenizer(p["prompt"])["input_ids"] for p in load_problems()]


def test_policies_that_cannot_run_are_refused_before_generating(tiny_pair):
    from stitchllm.errors import StitchError
    from stitchllm.eval.humaneval_run import check_policies

    check_policies(tiny_pair, None, ["random", "auto", "fixed:small"])  # auto without stitches serves `large`
    with pytest.raises(StitchError, match="needs stitches and a trained router"):
        check_policies(tiny_pair, None, ["random", "router"])
    with pytest.raises(StitchError, match="unknown policy"):
        check_policies(tiny_pair, None, ["fastest"])
    with pytest.raises(StitchError, match="unknown route"):
        check_policies(tiny_pair, None, ["fixed:medium"])
