"""Does the router know which HumanEval problems `small` solves? Its route choices scored by pass@1.

    .venv/bin/python benchmarks/router_humaneval.py [--family qwen2.5-coder]
        [--samples docs/bench/family/humaneval_gguf_amx_164_outcomes.jsonl] [--weights gguf] [--json]

The router (the user's own, else the shipped one) is trained on text continuations or on other code problems'
outcomes (`router train --target text | task`), never on HumanEval. Served on the HumanEval workload, what matters
is whether the problems it sends to `small` are those `small` solves as well as
`large`. This scores that offline: for every HumanEval problem the router reads the chat prompt's states (as the
engine does when it serves the request) and predicts each route's loss; the per-problem pass/fail of `small` and
`large` comes from an `eval --task humaneval --routes large,small --samples FILE` run. Restricted to the two whole
models (the stitched routes' pass@1 is not measured), `router eval`'s curves follow with pass@1 as the quality:
pass@1 against the share of `small` for the router, `random` and the oracle that knows every outcome, and the
pass@1 each reaches at the mix whose cost per token gives 1.4x `large`'s tokens/s (the claim of issue 35) and at
30-60% of requests on `small`.
Costs are per token, as in `router eval`; `small` answers run longer in tokens, which this leaves out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from stitchllm.engine.build import load_router_for
from stitchllm.eval.humaneval import encode_problem, load_problems
from stitchllm.eval.router_eval import evaluate_policies
from stitchllm.family.registry import DEFAULT_FAMILY, family_sources
from stitchllm.routing.catalog import load_catalog
from stitchllm.routing.policies import RoutingBatch
from stitchllm.routing.task_router import prompt_features
from stitchllm.stitch.build import serving_stitches_dir

CLAIM_SPEEDUP = 1.4
SHARES = (0.3, 0.4, 0.5, 0.6)  # shares of requests on `small` to read each curve at
WHOLE_MODELS = ("small", "large")


def pass_table(samples: Path, task_ids: list[str]) -> torch.Tensor:
    """[problems, 2]: 1.0 where `small` (column 0) or `large` (column 1) passed the problem, from a samples file."""
    passed = {}
    for line in samples.read_text().splitlines():
        row = json.loads(line)
        passed[(row["task_id"], row["route"])] = float(row["passed"])
    missing = [t for t in task_ids for r in WHOLE_MODELS if (t, r) not in passed]
    if missing:
        raise SystemExit(f"{samples} lacks {len(missing)} (problem, route) results, e.g. {missing[0]}")
    return torch.tensor([[passed[(t, r)] for r in WHOLE_MODELS] for t in task_ids])


def loss_at_mix(curve: list[list[float]], cost: float) -> float:
    """Quality on a (cost, quality) curve at `cost`, interpolated between its nearest points."""
    points = sorted(curve)
    for (c0, q0), (c1, q1) in zip(points, points[1:]):
        if c0 <= cost <= c1:
            return q0 if c1 == c0 else q0 + (q1 - q0) * (cost - c0) / (c1 - c0)
    return points[0][1] if cost < points[0][0] else points[-1][1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default=DEFAULT_FAMILY)
    ap.add_argument("--samples", default="docs/bench/family/humaneval_gguf_amx_164_outcomes.jsonl")
    ap.add_argument("--weights", default="gguf", help="the family's weights for the router's features")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    catalog = load_catalog(*family_sources(args.family), weights=args.weights)
    router, _ = load_router_for(catalog, serving_stitches_dir(catalog.family))
    problems = load_problems()
    tokenizer = catalog.family.tokenizer
    prompts = [encode_problem(tokenizer, p, "chat", catalog.family.large.max_positions) for p in problems]
    passed = pass_table(Path(args.samples), [p["task_id"] for p in problems])
    predicted = router(prompt_features(catalog, prompts, router.feature_block))  # [problems, router routes]
    cols = [router.route_names.index(r) for r in WHOLE_MODELS]
    costs = [catalog.relative_cost(next(r for r in catalog.routes if r.name == name)) for name in WHOLE_MODELS]
    batch = RoutingBatch(list(WHOLE_MODELS), costs, predicted_loss=predicted[:, cols], true_loss=1 - passed)
    report = evaluate_policies(batch, passed, ["whole-model", "random", "oracle"])
    claim_cost = 1 / CLAIM_SPEEDUP
    small_share = (1 - claim_cost) / (1 - costs[0])
    report["claim"] = {"speedup": CLAIM_SPEEDUP, "cost": claim_cost, "small_share": small_share} | {
        name: loss_at_mix(r["curve"], claim_cost) for name, r in report["policies"].items()}
    report["at_share"] = {name: {str(s): loss_at_mix(r["curve"], 1 - s * (1 - costs[0])) for s in SHARES}
                          for name, r in report["policies"].items()}
    predicted_gap = predicted[:, cols[0]] - predicted[:, cols[1]]  # how much worse the router expects `small`
    only_large = (passed[:, 1] == 1) & (passed[:, 0] == 0)
    report["predicted_gap"] = {"only_large_solves": float(predicted_gap[only_large].mean()),
                               "the_rest": float(predicted_gap[~only_large].mean())}
    if args.json:
        print(json.dumps(report))
        return
    print(f"pass@1: small {report['small']['top1']:.3f}, large {report['large']['top1']:.3f} "
          f"({len(problems)} problems, chat prompts)")
    for name, r in report["policies"].items():
        at = "  ".join(f"{float(s):.0%}: {v:.3f}" for s, v in report["at_share"][name].items())
        print(f"{name:>12}  APGR {r['apgr']:.3f}  pass@1 at {CLAIM_SPEEDUP}x ({small_share:.0%} to small) "
              f"{report['claim'][name]:.3f}; at shares on small {at}")
    gap = report["predicted_gap"]
    print(f"predicted loss gap small - large: {gap['only_large_solves']:.3f} on the problems only `large` solves, "
          f"{gap['the_rest']:.3f} on the rest")


if __name__ == "__main__":
    main()
