"""`auto` with the controller's settings changed, against the shipped `auto` and `random`, under the same Poisson
arrivals per seed (interleaved, one 60 s window each).

    .venv/bin/python docs/bench/s20/controller_variants.py --rate 4.1 --seeds 3 low=0.75 low=0.75,plan_tpot=0.8

Each positional argument is one variant of `auto`: `SLOConfig` fields to override, and `free_fit=1` for session
19's step-time model (the fixed time fitted online, not held from the startup profile); e.g. session 19's
controller is `low=0.6,free_fit=1`. Engine, SLOs, quality labels and workload are
`benchmarks/equal_throughput.py`'s; the variant's controller replaces the engine's own. (The run
`held_fit_4.1.jsonl` named `free_fit=1` alone `auto-free-fit`.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from stitchllm.bench.driver import run_open_loop
from stitchllm.bench.report import summarize
from stitchllm.bench.run import BenchConfig, EngineTarget, heldout_workload
from stitchllm.bench.workload import poisson_arrivals
from stitchllm.routing.catalog import load_catalog
from stitchllm.routing.controller import LoadController
from stitchllm.stitch.build import stitches_dir


def overrides(spec: str) -> tuple[dict, bool]:
    """'low=0.6,free_fit=1' -> ({'low': 0.6}, True)"""
    fields = {k: float(v) for k, v in (kv.split("=") for kv in spec.split(","))}
    return fields, bool(fields.pop("free_fit", 0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="*")
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--policies", default="random,auto")
    args = ap.parse_args()
    cfg = BenchConfig(policies=("random", "auto"), duration=60.0, output_tokens=128, matmul_dtype="auto")
    catalog = load_catalog()
    stitch_dir = stitches_dir(catalog.family)
    requests, quality = heldout_workload(catalog, stitch_dir, cfg)
    target = EngineTarget(catalog, stitch_dir, cfg)
    capacity = summarize(*target.closed_loop("large", requests, cfg.concurrency, 40.0, cfg.output_tokens),
                         cfg.slo_ttft_ms, cfg.slo_tpot_ms, quality)["throughput_rps"]
    print(json.dumps({"large_capacity_rps": capacity, "rate": args.rate}), flush=True)
    names = args.policies.split(",") + args.variants
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        arrivals = poisson_arrivals(args.rate, cfg.duration, seed)
        for name in names:
            engine = target.engine("auto" if "=" in name else name)
            if "=" in name:
                fields, free_fit = overrides(name)
                slo = dataclasses.replace(engine.config.slo, **fields)
                engine.controller = LoadController(slo, cheapest_cost=engine.costs[0])
                if free_fit:
                    engine.step_time.held_per_read = None
            s = summarize(*run_open_loop(engine, requests, arrivals, cfg.output_tokens), cfg.slo_ttft_ms,
                          cfg.slo_tpot_ms, quality, cfg.duration)
            print(json.dumps({"seed": seed, "policy": name, "large_share": s["route_mix"].get("large", 0.0)}
                             | {k: s[k] for k in ("slo_attainment", "quality_top1", "quality_ppl", "tpot_p90_ms")}),
                  flush=True)


if __name__ == "__main__":
    main()
