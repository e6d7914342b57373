"""Quality at equal throughput, repeated: policies at one offered load, several Poisson arrival seeds, interleaved.

    .venv/bin/python benchmarks/equal_throughput.py [--family qwen2.5-coder] [--fraction 1.25 | --rate R]
        [--seeds 4] [--first-seed 0] [--duration 60] [--policies random,whole-model,auto] [--output-tokens 128]
        [--matmul-dtype auto] [--weights fp32] [--slo-ttft 2000] [--slo-tpot 250] [--min-cost 0]
        [--static-cost 0.7] [--concurrency 128] [--json]

`stitchllm bench` runs each rate once, with one arrival seed; near the large model's capacity one 60 s window
decides which policy served more requests on `large` by a few percent, within the run-to-run spread. This runs
every policy under the same arrivals for each seed (so policies that meet the SLOs serve the same throughput)
and reports each seed and the mean: the rate is `--fraction` x what `large` sustains at saturation, measured
first in the same run, as `bench --sweep` does, or a fixed `--rate` (req/s): one closed-loop window of `large`
on this shared machine has read anywhere from 2.9 to 3.5 req/s within an hour, so a rate taken from the
saturation run of `stitchllm bench` can be the steadier basis. Same engine, SLOs and quality labels as
`stitchllm bench`.

A policy `auto:FIELD=VALUE/...` is `auto` with its controller's `SLOConfig` fields overridden, and `free_fit=1`
for session 19's step-time model (the fixed time fitted online instead of held from the startup profile): an A/B
of controller settings under the same arrivals, e.g. `--policies random,auto,auto:low=0.6/free_fit=1` puts
session 19's controller beside the shipped one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

from stitchllm.bench.driver import run_open_loop
from stitchllm.bench.report import summarize
from stitchllm.bench.run import BenchConfig, EngineTarget, heldout_workload
from stitchllm.bench.workload import poisson_arrivals
from stitchllm.family.registry import DEFAULT_FAMILY, family_sources
from stitchllm.routing.catalog import load_catalog
from stitchllm.routing.controller import LoadController
from stitchllm.stitch.build import serving_stitches_dir

FIELDS = ("slo_attainment", "quality_top1", "quality_ppl", "tpot_p90_ms", "ttft_p90_ms")


def policy_engine(target: EngineTarget, policy: str):
    """A fresh engine for `policy`; 'auto:low=0.6/free_fit=1' -> `auto` with those controller settings."""
    name, _, spec = policy.partition(":")
    if name != "auto" or not spec:  # `fixed:ROUTE` and the plain policies
        return target.engine(policy)
    engine = target.engine("auto")
    fields = {k: float(v) for k, v in (kv.split("=") for kv in spec.split("/"))}
    if fields.pop("free_fit", 0):
        for model in (engine.step_time.few, engine.step_time.many):
            if model is not None:
                model.held_per_read = None
    engine.controller = LoadController(dataclasses.replace(engine.config.slo, **fields), cheapest_cost=engine.costs[0])
    return engine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default=DEFAULT_FAMILY)
    ap.add_argument("--fraction", type=float, default=1.25)
    ap.add_argument("--rate", type=float, default=None, help="offered req/s (instead of fraction x capacity)")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--policies", default="random,whole-model,auto")
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--saturation-duration", type=float, default=40.0)
    ap.add_argument("--matmul-dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--weights", default="fp32", help="the engine's weight format, as `stitchllm bench --weights`")
    ap.add_argument("--slo-ttft", type=float, default=BenchConfig.slo_ttft_ms, help="TTFT SLO, ms")
    ap.add_argument("--slo-tpot", type=float, default=BenchConfig.slo_tpot_ms, help="TPOT SLO, ms")
    ap.add_argument("--min-cost", type=float, default=BenchConfig.min_cost, help="auto's quality floor")
    ap.add_argument("--static-cost", type=float, default=BenchConfig.static_cost,
                    help="the target cost of random and whole-model")
    ap.add_argument("--concurrency", type=int, default=BenchConfig.concurrency,
                    help="requests in flight when `large`'s capacity is measured")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cfg = BenchConfig(policies=tuple(args.policies.split(",")), duration=args.duration,
                      output_tokens=args.output_tokens, matmul_dtype=args.matmul_dtype, weights=args.weights,
                      slo_ttft_ms=args.slo_ttft, slo_tpot_ms=args.slo_tpot, min_cost=args.min_cost,
                      static_cost=args.static_cost, concurrency=args.concurrency)
    catalog = load_catalog(*family_sources(args.family), weights=cfg.weights)
    stitch_dir = serving_stitches_dir(catalog.family)
    requests, quality = heldout_workload(catalog, stitch_dir, cfg)
    target = EngineTarget(catalog, stitch_dir, cfg)

    def row(records, wall, window=None) -> dict:
        return summarize(records, wall, cfg.slo_ttft_ms, cfg.slo_tpot_ms, quality, window)

    capacity = row(*target.closed_loop("large", requests, cfg.concurrency, args.saturation_duration,
                                       cfg.output_tokens))["throughput_rps"]
    rate = args.rate if args.rate is not None else round(capacity * args.fraction, 2)
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        arrivals = poisson_arrivals(rate, cfg.duration, seed)
        for policy in cfg.policies:
            s = row(*run_open_loop(policy_engine(target, policy), requests, arrivals, cfg.output_tokens), cfg.duration)
            rows.append({"seed": seed, "policy": policy, "large_share": s["route_mix"].get("large", 0.0)}
                        | {k: s[k] for k in FIELDS})
            if args.json:
                print(json.dumps(rows[-1]), flush=True)
    means = {p: {k: statistics.fmean(r[k] for r in rows if r["policy"] == p) for k in ("large_share",) + FIELDS}
             for p in cfg.policies}
    if args.json:
        print(json.dumps({"large_capacity_rps": capacity, "rate": rate, "rows": rows, "mean": means}))
        return
    print(f"`large` sustains {capacity:.2f} req/s at saturation; offered {rate} req/s ({rate / capacity:.2f}x), "
          f"{args.seeds} arrival seeds x {cfg.duration:.0f} s")
    print("| seed | policy | SLO met | top-1 | ppl | on `large` | TPOT p90 (ms) | TTFT p90 (ms) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows + [{"seed": "mean", "policy": p} | m for p, m in means.items()]:
        print(f"| {r['seed']} | {r['policy']} | {r['slo_attainment']:.1%} | {r['quality_top1']:.3f} | "
              f"{r['quality_ppl']:.1f} | {r['large_share']:.1%} | {r['tpot_p90_ms']:.0f} | {r['ttft_p90_ms']:.0f} |")


if __name__ == "__main__":
    main()
