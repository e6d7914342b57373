"""What throughput can any routing policy get from this family within a perplexity budget? Measured, then bounded.

    .venv/bin/python benchmarks/saturation_bound.py [--duration 60] [--ppl-budget 1.05] [--speedup 1.4] [--json]

Issue 7 asks `auto` for 1.4x `large`'s output tokens/s at saturation with the perplexity it served within 5% of
`large`'s. This runs every route of the catalog alone at saturation (the closed loop of `stitchllm bench`, same
engine, requests and quality labels), then `auto`, and asks how far any mix of those routes could go.

A request of route r costs 1 / T_r engine-seconds per output token (T_r: the route's saturated tokens/s) and
scores NLL[i, r] on request i's continuation; both add up over requests. Two bounds:
- request-blind: one share per route for every request (what a router that cannot tell requests apart gets);
- per-request oracle: each request's best route, knowing its true NLL on every route (no router does better).
Each is the lower convex hull of (time, NLL) over assignments, traced by pricing NLL at lam engine-seconds per
nat: each request takes the route with the least time + lam x NLL; between two prices, a random split of the
requests that change route. The time is optimistic (a step that mixes routes reads both models' weights, a step
of one route reads one), so both are upper bounds on what `auto` can deliver at that perplexity.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from stitchllm.bench.report import summarize
from stitchllm.bench.run import BenchConfig, EngineTarget, heldout_workload
from stitchllm.routing.catalog import load_catalog
from stitchllm.stitch.build import stitches_dir


def convex_frontier(seconds: torch.Tensor, nll: torch.Tensor) -> list[tuple[float, float]]:
    """(mean seconds per token, mean NLL) at the hull's vertices, from all-`large` (least NLL) to the fastest.
    seconds: [R] per route; nll: [N, R] per request and route (one row: the request-blind mix)."""
    points = []
    # an NLL price from dear to free, 0.5% apart: fine enough that no vertex of the hull is skipped in practice
    for lam in torch.logspace(-6, 2, 4000).flip(0).tolist():
        pick = (seconds[None, :] + lam * nll).argmin(dim=1)  # [N] each request's route at this price
        point = (seconds[pick].mean().item(), nll.gather(1, pick[:, None]).mean().item())
        if not points or point != points[-1]:
            points.append(point)
    return points


def at_nll(frontier: list[tuple[float, float]], budget: float) -> float:
    """Least mean seconds per token whose mean NLL is within `budget` (linear between hull vertices)."""
    best = frontier[0][0]
    for (t0, n0), (t1, n1) in zip(frontier, frontier[1:]):
        if n1 <= budget:
            best = t1
        elif n0 <= budget:
            best = t0 + (t1 - t0) * (budget - n0) / (n1 - n0)
    return best


def at_seconds(frontier: list[tuple[float, float]], seconds: float) -> float:
    """Least mean NLL at a mean of `seconds` per token or less; inf if no mix is that fast."""
    for (t0, n0), (t1, n1) in zip(frontier, frontier[1:]):
        if t1 <= seconds <= t0:
            return n0 + (n1 - n0) * (t0 - seconds) / (t0 - t1)
    return frontier[0][1] if seconds >= frontier[0][0] else math.inf


def print_markdown(report: dict) -> None:
    """The two tables BENCHMARKS.md quotes."""
    speedup, budget, auto = report["speedup"], report["ppl_budget"], report["auto"]
    print(f"| route | cost | tok/s at saturation | x `large` | ppl / `large`'s | ppl / `large`'s it would need for "
          f"{speedup}x at {budget}x, mixed with `large` |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in report["routes"]:
        slow = "-" if r["route"] == "large" else f"none: under {speedup}x alone"
        need = f"{r['ppl_ratio_needed']:.3f}" if r["ppl_ratio_needed"] else slow
        print(f"| {r['route']} | {r['cost']:.3f} | {r['tok_s']:.1f} | {r['speedup']:.2f} | {r['ppl_ratio']:.3f} | "
              f"{need} |")
    print(f"\n| policy | x `large`'s tok/s at ppl <= {budget}x | ppl / `large`'s at {speedup}x |")
    print("|---|---:|---:|")
    for name, b in report["bounds"].items():
        print(f"| {name} (bound) | {b['speedup_within_budget']:.3f} | {b['ppl_ratio_at_speedup']:.3f} |")
    mix = ", ".join(f"{route} {share:.1%}" for route, share in auto["route_mix"].items())
    print(f"| `auto`, measured ({mix}; top-1 {auto['top1']:.3f}) | {auto['speedup']:.3f} "
          f"(at ppl {auto['ppl_ratio']:.3f}x) | |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of the closed loop per policy")
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--ppl-budget", type=float, default=1.05, help="served ppl / large's ppl")
    ap.add_argument("--speedup", type=float, default=1.4, help="output tokens/s / large's")
    ap.add_argument("--matmul-dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cfg = BenchConfig(output_tokens=args.output_tokens, matmul_dtype=args.matmul_dtype)
    catalog = load_catalog()
    stitch_dir = stitches_dir(catalog.family)
    requests, quality = heldout_workload(catalog, stitch_dir, cfg)
    target = EngineTarget(catalog, stitch_dir, cfg)
    measured = {}
    for policy in [f"fixed:{name}" for name in quality.route_names] + ["auto"]:  # routes in cost order, large last
        records, wall = target.closed_loop(policy, requests, cfg.concurrency, args.duration, cfg.output_tokens)
        measured[policy] = summarize(records, wall, cfg.slo_ttft_ms, cfg.slo_tpot_ms, quality)
    tok_s = torch.tensor([measured[f"fixed:{n}"]["throughput_tok_s"] for n in quality.route_names])
    seconds = 1.0 / tok_s  # [R] engine-seconds per output token
    large_s, large_nll = seconds[-1].item(), quality.nll[:, -1].mean().item()
    budget = large_nll + math.log(args.ppl_budget)
    bounds = {}
    for name, nll in [("request-blind mix", quality.nll.mean(0, keepdim=True)), ("per-request oracle", quality.nll)]:
        frontier = convex_frontier(seconds, nll)
        bounds[name] = {"speedup_within_budget": large_s / at_nll(frontier, budget),
                        "ppl_ratio_at_speedup": math.exp(at_seconds(frontier, large_s / args.speedup) - large_nll)}
    # What a route would need for a blind mix of it and `large` to meet both: a share p >= (1 - 1/speedup) /
    # (1 - seconds_r / large_s) on it, and p x its NLL excess <= log(ppl_budget).
    routes = []
    for i, name in enumerate(quality.route_names):
        saved = 1.0 - seconds[i].item() / large_s
        share = (1.0 - 1.0 / args.speedup) / saved if saved > 0 else math.inf
        routes.append({"route": name, "cost": quality.costs[i], "tok_s": tok_s[i].item(),
                       "speedup": large_s / seconds[i].item(),
                       "ppl_ratio": math.exp(quality.nll[:, i].mean().item() - large_nll),
                       "ppl_ratio_needed": args.ppl_budget ** (1.0 / share) if share <= 1 else None})
    auto = measured["auto"]
    auto_row = {"speedup": auto["throughput_tok_s"] / tok_s[-1].item(),
                "ppl_ratio": auto["quality_ppl"] / measured["fixed:large"]["quality_ppl"],
                "top1": auto["quality_top1"], "route_mix": auto["route_mix"]}
    report = {"routes": routes, "bounds": bounds, "auto": auto_row, "ppl_budget": args.ppl_budget,
              "speedup": args.speedup, "duration": args.duration}
    if args.json:
        print(json.dumps(report))
        return
    print_markdown(report)


if __name__ == "__main__":
    main()
