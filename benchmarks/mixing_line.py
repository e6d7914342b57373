"""Is a stitched route worth serving? Its quality against a mix of the two whole models at the same cost.

    .venv/bin/stitchllm eval --text heldout.txt --routes all --max-tokens 16384 --json > eval.json
    .venv/bin/python benchmarks/mixing_line.py eval.json

A policy that sends a fraction f of requests to `large` and the rest to `small` costs f + (1 - f) x cost(small)
on average, and on the same tokens its mean NLL and top-1 agreement are the same mix of the two models' (a mean
over tokens). A stitched route earns its place only above that line: otherwise `random` at the same cost does
better. Prints, per route, the mix's perplexity and top-1 at the route's cost and the route's margin over it.
"""

from __future__ import annotations

import json
import math
import sys


def main() -> None:
    rows = {r["name"]: r for r in json.load(open(sys.argv[1]))["routes"]}
    small, large = rows.pop("small"), rows.pop("large")
    print("| route | cost | ppl | mix ppl | top-1 | mix top-1 | NLL margin (nats) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in sorted(rows.items(), key=lambda kv: kv[1]["cost"]):
        f = (r["cost"] - small["cost"]) / (large["cost"] - small["cost"])  # share on `large` at the same cost
        mix_nll = f * math.log(large["ppl"]) + (1 - f) * math.log(small["ppl"])
        mix_top1 = f * large["top1_agree"] + (1 - f) * small["top1_agree"]
        print(f"| {name} | {r['cost']:.3f} | {r['ppl']:.2f} | {math.exp(mix_nll):.2f} | {r['top1_agree']:.3f} | "
              f"{mix_top1:.3f} | {mix_nll - math.log(r['ppl']):+.3f} |")


if __name__ == "__main__":
    main()
