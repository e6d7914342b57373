"""Does `small` know when it is about to fail? Its own confidence over its first answer tokens, scored on HumanEval.

    .venv/bin/python benchmarks/cascade_signal.py [--family qwen2.5-coder] [--weights gguf]
        [--large docs/bench/family/humaneval_gguf_amx_164_outcomes.jsonl]
        [--save docs/bench/family/cascade_small_164.jsonl] [--reuse] [--json]

The router reads the prompt through `large`'s bottom blocks and knows little about which problems `small` solves
(docs/ROUTING.md). A cascade would read `small`'s answer instead: start on `small`, and move the request to
`large` when `small`'s first K tokens are unsure. This measures whether that signal exists before any engine work:
`small` answers every HumanEval problem greedily (chat prompts, the engine and stop rule of `eval --task
humaneval`) with each token's logprob and top-5; each answer is checked; `large`'s per-problem outcomes come from
an earlier `eval` run (`--large`). For K in KS and each confidence signal it prints the AUROC of "`small` fails"
and the pass@1 of a cascade that moves the least confident X% to `large` (a moved request scores `large`'s
outcome), beside moving a random X% (the expectation) and the oracle.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from stitchllm.engine.build import engine_from_catalog
from stitchllm.engine.config import EngineConfig
from stitchllm.eval.execution import check_completions
from stitchllm.eval.humaneval import AnswerWatch, completion_from_text, encode_problem, load_problems
from stitchllm.family.registry import DEFAULT_FAMILY, family_sources
from stitchllm.routing.catalog import load_catalog
from stitchllm.sampling import SamplingParams

KS = (8, 16, 32, 64, 128, 10_000)  # answer tokens read (10_000: the whole answer)
SHARES_MOVED = (0.2, 0.3, 0.4, 0.5)
TOP_N = 5


def generate_small(family: str, weights: str) -> list[dict]:
    """Every HumanEval problem answered by `small`: task_id, passed, and per token [logprob, top-2 logprob]."""
    catalog = load_catalog(*family_sources(family), weights=weights)
    problems = load_problems()
    tokenizer = catalog.family.tokenizer
    prompts = [encode_problem(tokenizer, p, "chat", catalog.family.large.max_positions) for p in problems]
    config = EngineConfig(max_model_len=max(map(len, prompts)) + 512, max_num_seqs=64, kv_budget_mb=3072,
                          policy="fixed:small", weights=weights, matmul_dtype="auto")
    engine = engine_from_catalog(catalog, None, config)
    params = SamplingParams(max_tokens=512, logprobs=TOP_N)
    rows = {f"p{i}": {"task_id": p["task_id"], "ids": [], "lp": []} for i, p in enumerate(problems)}
    watches = {}
    for i, ids in enumerate(prompts):
        engine.add_request(f"p{i}", ids, params)
        watches[f"p{i}"] = AnswerWatch(tokenizer, "chat")
    while engine.has_unfinished():
        for out in engine.step():
            row = rows[out.request_id]
            row["ids"] += out.new_token_ids
            row["lp"] += [[round(t.logprob, 4), round(t.top[1][1] if len(t.top) > 1 else t.logprob, 4)]
                          for t in out.logprobs or []]
            if not out.finished and watches[out.request_id].add(out.new_token_ids):
                engine.abort(out.request_id)
    texts = [tokenizer.decode(r["ids"], skip_special_tokens=True) for r in rows.values()]
    completions = [completion_from_text(t, p, "chat") for t, p in zip(texts, problems)]
    results = check_completions(problems, completions, 10.0, 2)
    return [{"task_id": r["task_id"], "passed": res.result == "passed", "lp": r["lp"]}
            for r, res in zip(rows.values(), results)]


def signals(lp: list[list[float]], k: int) -> dict[str, float]:
    """Confidence over the first k tokens (higher = surer): mean logprob, the worst token's logprob, the share of
    tokens below p=0.5 (negated), and the mean margin between the chosen token and the runner-up."""
    head = lp[:k] or [[0.0, 0.0]]
    chosen = [c for c, _ in head]
    return {"mean_logprob": sum(chosen) / len(chosen), "min_logprob": min(chosen),
            "unsure_share": -sum(c < math.log(0.5) for c in chosen) / len(chosen),
            "mean_margin": sum(c - r for c, r in head) / len(head)}


def auroc(scores: list[float], positive: list[bool]) -> float:
    """P(score of a random positive < score of a random negative): how well low confidence flags a failure."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    wins = sum((a < b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def cascade_pass(scores: list[float], small: list[bool], large: list[bool], moved: float) -> float:
    """pass@1 when the `moved` share of least confident problems is served by `large` instead."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    n_moved = round(moved * len(scores))
    chosen = set(order[:n_moved])
    return sum(large[i] if i in chosen else small[i] for i in range(len(scores))) / len(scores)


def large_outcomes(path: Path) -> dict[str, bool]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["task_id"]: r["passed"] for r in rows if r["route"] == "large"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default=DEFAULT_FAMILY)
    ap.add_argument("--weights", default="gguf")
    ap.add_argument("--large", default="docs/bench/family/humaneval_gguf_amx_164_outcomes.jsonl")
    ap.add_argument("--save", default="docs/bench/family/cascade_small_164.jsonl")
    ap.add_argument("--reuse", action="store_true", help="read --save instead of generating")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    save = Path(args.save)
    if args.reuse:
        rows = [json.loads(line) for line in save.read_text().splitlines()]
    else:
        rows = generate_small(args.family, args.weights)
        save.write_text("".join(json.dumps(r) + "\n" for r in rows))
    large = large_outcomes(Path(args.large))
    small_ok = [r["passed"] for r in rows]
    large_ok = [large[r["task_id"]] for r in rows]
    n = len(rows)
    gain = [lg and not s for s, lg in zip(small_ok, large_ok)]  # the problems moving pays for
    oracle_scores = [float(not g) + float(s) for g, s in zip(gain, small_ok)]  # moves those first, then the rest
    report = {"small": sum(small_ok) / n, "large": sum(large_ok) / n, "n": n, "signals": {},
              "oracle": {str(m): cascade_pass(oracle_scores, small_ok, large_ok, m) for m in SHARES_MOVED}}
    report["random"] = {str(m): (1 - m) * report["small"] + m * report["large"] for m in SHARES_MOVED}
    for k in KS:
        per = [signals(r["lp"], k) for r in rows]
        for name in per[0]:
            scores = [p[name] for p in per]
            report["signals"][f"{name}@{k}"] = {
                "auroc_small_fails": auroc(scores, [not s for s in small_ok]),
                "auroc_only_large_solves": auroc(scores, gain),
                "cascade": {str(m): cascade_pass(scores, small_ok, large_ok, m) for m in SHARES_MOVED}}
    if args.json:
        print(json.dumps(report))
        return
    print(f"pass@1 small {report['small']:.3f}, large {report['large']:.3f}, {n} problems; moved to large:",
          "  ".join(f"{float(m):.0%}" for m in SHARES_MOVED))
    print(f"{'random':>22} {'':>12} {'':>12}  " + "  ".join(f"{v:.3f}" for v in report["random"].values()))
    print(f"{'oracle':>22} {'':>12} {'':>12}  " + "  ".join(f"{v:.3f}" for v in report["oracle"].values()))
    for name, r in report["signals"].items():
        print(f"{name:>22} AUROC {r['auroc_small_fails']:.3f} {r['auroc_only_large_solves']:.3f}  "
              + "  ".join(f"{v:.3f}" for v in r["cascade"].values()))


if __name__ == "__main__":
    main()
