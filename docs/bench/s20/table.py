"""Markdown table of `benchmarks/equal_throughput.py --json` output: one row per seed and policy, then the means.

    .venv/bin/python docs/bench/s20/table.py FILE.jsonl
"""
import json
import statistics
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith('{"seed"')]
policies = list(dict.fromkeys(r["policy"] for r in rows))
print("| seed | policy | SLO met | top-1 | ppl | on `large` | TPOT p90 (ms) |\n|---|---|---:|---:|---:|---:|---:|")
means = [{"seed": "mean", "policy": p} | {k: statistics.fmean(r[k] for r in rows if r["policy"] == p)
         for k in ("slo_attainment", "quality_top1", "quality_ppl", "large_share", "tpot_p90_ms")} for p in policies]
for r in rows + means:
    print(f"| {r['seed']} | {r['policy']} | {r['slo_attainment']:.1%} | {r['quality_top1']:.3f} | "
          f"{r['quality_ppl']:.1f} | {r['large_share']:.1%} | {r['tpot_p90_ms']:.0f} |")
