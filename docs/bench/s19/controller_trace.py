"""Trace `auto`'s controller at one offered load, every 5 s: target, plan, correction, pressure (its parts), demand.

    .venv/bin/python docs/bench/s19/controller_trace.py RATE SEEDS POLICIES    # e.g. 3.93 0,2 random,auto
"""
import json, sys, time, collections
import torch
from stitchllm.bench.report import summarize
from stitchllm.bench.run import BenchConfig, EngineTarget, quality_labels
from stitchllm.bench.workload import make_requests, poisson_arrivals
from stitchllm.bench import driver
from stitchllm.data.corpus import python_docs_text
from stitchllm.routing.catalog import load_catalog
from stitchllm.stitch.build import stitches_dir

rate, seeds, policies = float(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")], sys.argv[3].split(",")
cfg = BenchConfig(policies=tuple(policies), duration=60, output_tokens=128, matmul_dtype="auto")
catalog = load_catalog(); sd = stitches_dir(catalog.family)
ids = torch.tensor(catalog.family.tokenizer(python_docs_text("heldout"), add_special_tokens=False)["input_ids"])
requests = make_requests(ids, cfg.num_requests, cfg.prompt_tokens, cfg.output_tokens)
quality = quality_labels(catalog, sd, requests, cfg.prompt_tokens, cfg.matmul_dtype)
target = EngineTarget(catalog, sd, cfg)
for seed in seeds:
    arrivals = poisson_arrivals(rate, cfg.duration, seed)
    for policy in policies:
        eng = target.engine(policy)
        log = []
        if policy == "auto":
            orig = eng.controller.update
            t0 = [None]
            def upd(sig, now, orig=orig, eng=eng, t0=t0):
                t0[0] = now if t0[0] is None else t0[0]
                out = orig(sig, now)
                log.append((now - t0[0], out, eng.controller.planned_cost(sig), eng.controller.correction,
                            eng.controller.pressure(sig), sig.demand_tok_s, sig.step_s_per_token, sig.overhead_mixed_s, sig.waiting, sig.ttft_p90_ms, sig.tpot_p90_ms, len(eng.scheduler.running)))
                return out
            eng.controller.update = upd
        recs, wall = driver.run_open_loop(eng, requests, arrivals, cfg.output_tokens)
        s = summarize(recs, wall, cfg.slo_ttft_ms, cfg.slo_tpot_ms, quality, cfg.duration)
        print(json.dumps({"seed": seed, "policy": policy, "slo": s["slo_attainment"], "top1": s["quality_top1"],
                          "ppl": s["quality_ppl"], "tpot90": s["tpot_p90_ms"], "mix": s["route_mix"]}), flush=True)
        if log:
            b = collections.defaultdict(list)
            for row in log: b[int(row[0] // 5)].append(row)
            for k in sorted(b):
                rows = b[k]; m = lambda i: sum(r[i] for r in rows) / len(rows)
                print(f"  t={k*5:3d}s target {m(1):.3f} plan {m(2):.3f} corr {m(3):+.2f} p {m(4):.2f} "
                      f"demand {m(5):.0f} per_tok {m(6)*1e3:.3f}ms ovh_mixed {m(7)*1e3:.0f}ms wait {m(8):.1f} ttft {m(9):.0f} tpot {m(10):.0f} run {m(11):.0f}", flush=True)
