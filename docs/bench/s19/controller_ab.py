"""A/B of the load controller: `auto` with this session's controller against `auto` with an earlier one, `random`
beside them, under the same Poisson arrivals per seed (interleaved).

    git show d9941de:src/stitchllm/routing/controller.py > /tmp/controller_s18.py
    .venv/bin/python docs/bench/s19/controller_ab.py /tmp/controller_s18.py --fraction 1.25 --seeds 3

The earlier controller is loaded from its file (it imports nothing of the package) and put in place of the
engine's own; everything else (engine, SLOs, quality labels, workload) is `benchmarks/equal_throughput.py`'s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

from stitchllm.bench.driver import run_open_loop
from stitchllm.bench.report import summarize
from stitchllm.bench.run import BenchConfig, EngineTarget, heldout_workload
from stitchllm.bench.workload import poisson_arrivals
from stitchllm.routing.catalog import load_catalog
from stitchllm.stitch.build import stitches_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("baseline", help="an earlier routing/controller.py")
    ap.add_argument("--fraction", type=float, default=1.25)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("baseline_controller", args.baseline)
    baseline = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(baseline)
    cfg = BenchConfig(policies=("random", "auto"), duration=60.0, output_tokens=128, matmul_dtype="auto")
    catalog = load_catalog()
    stitch_dir = stitches_dir(catalog.family)
    requests, quality = heldout_workload(catalog, stitch_dir, cfg)
    target = EngineTarget(catalog, stitch_dir, cfg)
    capacity = summarize(*target.closed_loop("large", requests, cfg.concurrency, 40.0, cfg.output_tokens),
                         cfg.slo_ttft_ms, cfg.slo_tpot_ms, quality)["throughput_rps"]
    rate = round(capacity * args.fraction, 2)
    print(json.dumps({"large_capacity_rps": capacity, "rate": rate}), flush=True)
    for seed in range(args.seeds):
        arrivals = poisson_arrivals(rate, cfg.duration, seed)
        for name in ("random", "auto", "auto-baseline"):
            engine = target.engine(name.removesuffix("-baseline"))
            if name == "auto-baseline":
                engine.controller = baseline.LoadController(engine.config.slo, cheapest_cost=engine.costs[0])
            s = summarize(*run_open_loop(engine, requests, arrivals, cfg.output_tokens), cfg.slo_ttft_ms,
                          cfg.slo_tpot_ms, quality, cfg.duration)
            print(json.dumps({"seed": seed, "policy": name, "large_share": s["route_mix"].get("large", 0.0)}
                             | {k: s[k] for k in ("slo_attainment", "quality_top1", "quality_ppl", "tpot_p90_ms")}),
                  flush=True)


if __name__ == "__main__":
    main()
