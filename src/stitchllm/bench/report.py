"""Summaries of a benchmark run: latency percentiles, throughput, goodput under SLOs, route mix, quality."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from stitchllm.bench.driver import Record
from stitchllm.routing.dataset import RouterDataset


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def summarize(records: list[Record], wall: float, slo_ttft_ms: float, slo_tpot_ms: float,
              quality: RouterDataset | None, arrival_window: float | None = None) -> dict:
    """One result row: throughput, latency p50/p90/p99, goodput, route mix and the quality served.

    Goodput is the rate of requests that met both SLOs: over the arrival window under Poisson load (so a server
    that keeps up serves goodput = offered rate, however long the last requests take to drain), over the wall
    time in a closed loop. Without quality labels (the humaneval workload) the quality fields are None."""
    done = [r for r in records if r.token_times and r.error is None]
    tokens = sum(r.num_tokens for r in done)
    good = [r for r in done if r.ttft * 1000 <= slo_ttft_ms and r.tpot * 1000 <= slo_tpot_ms]
    routes = Counter(r.route for r in done)
    # a server may report routes this family's labels do not know (another family behind --url): no quality then
    known = quality is not None and bool(done) and all(r.route in quality.route_names for r in done)
    idx = [quality.route_names.index(r.route) for r in done] if known else []
    rows = [r.request.index for r in done]
    agree = float(quality.agree[rows, idx].mean()) if known else float("nan")
    nll = float(quality.nll[rows, idx].mean()) if known else float("nan")
    row = {"requests": len(done), "failed": len(records) - len(done), "wall_s": round(wall, 2),
           "throughput_rps": len(done) / wall,
           "throughput_tok_s": tokens / wall, "goodput_rps": len(good) / (arrival_window or wall),
           "slo_attainment": len(good) / len(done) if done else float("nan"),
           "route_mix": {k: v / len(done) for k, v in sorted(routes.items())} if done else {},
           "quality_top1": agree if quality is not None else None,
           "quality_ppl": math.exp(nll) if quality is not None else None}
    for name, values in (("ttft", [r.ttft for r in done]), ("tpot", [r.tpot for r in done]),
                         ("itl", [x for r in done for x in r.itls]), ("e2e", [r.e2e for r in done])):
        for q in (50, 90, 99):
            row[f"{name}_p{q}_ms"] = _pct(values, q)
    return row


def steady_tok_s(records: list[Record], window: float) -> float:
    """Output tokens/s while a closed loop kept every slot busy: the tokens that arrived within `window` seconds of
    the first request sent, over `window`. The drain after it (a shrinking batch finishing the last answers, long
    ones on the slowest route) is left out, so the figure is the rate the policy sustains under saturation."""
    done = [r for r in records if r.token_times and r.error is None]
    if not done:
        return 0.0
    end = min(r.arrival for r in records) + window
    # over HTTP a stamp is a chunk of text: each counts its share of the server's token count
    tokens = sum(sum(t <= end for t in r.token_times) * r.num_tokens / len(r.token_times) for r in done)
    return tokens / window


def busy_window(records: list[Record], duration: float, max_requests: int) -> float:
    """How long a closed loop kept every slot busy: `duration`, or, when it stopped sending at `max_requests`
    (> 0) first, until its last request was sent."""
    if max_requests and len(records) >= max_requests:
        return max(r.arrival for r in records) - min(r.arrival for r in records)
    return duration


def paired_with_large(rows: list[dict], policy: str) -> dict:
    """pass@1 of `policy` and of `large` over the problems both served at saturation (each policy's closed loop
    serves the first N problems, N its own), every repeat pooled: the fair comparison of the quality served.
    Empty when `large` was not run. rows: saturation rows with `problem_pass` ({problem: fraction passed})."""
    def pooled(name: str) -> dict[int, list[float]]:
        out: dict[int, list[float]] = {}
        for r in rows:
            if r["policy"] == name:
                for i, v in r["problem_pass"].items():
                    out.setdefault(int(i), []).append(v)
        return out

    mine, large = pooled(policy), pooled("large")
    common = sorted(set(mine) & set(large))
    if not common:
        return {}

    def mean_over(table: dict[int, list[float]]) -> float:
        return sum(sum(table[i]) / len(table[i]) for i in common) / len(common)

    return {"paired_problems": len(common), "paired_pass_at_1": mean_over(mine),
            "paired_large_pass_at_1": mean_over(large)}
