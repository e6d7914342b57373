"""The mixing line: what routing whole requests between the two models gives at a route's cost.

Sending a share s of the tokens to the large model and the rest to the small one costs
c(s) = c_S + s (c_L - c_S), and its perplexity is the geometric mix exp(s ln ppl_L + (1 - s) ln ppl_S) (the mean
NLL is the weighted mean of the two); its top-1 agreement with large and its KL mix linearly (large's own are 1
and 0). A stitched route earns its place only where it beats that line at its own cost.
"""

from __future__ import annotations

import math


def large_share(cost: float, small_cost: float, large_cost: float) -> float:
    """The share of large whose mix costs `cost` (clamped to [0, 1])."""
    return min(1.0, max(0.0, (cost - small_cost) / (large_cost - small_cost)))


def with_mixing_line(rows: list[dict]) -> list[dict]:
    """Rows of `evaluate_routes` (which must include `small` and `large`), each with `mix_ppl`, `mix_top1`,
    `mix_kl` at its cost and `mix_margin` = mix_ppl / ppl - 1 (> 0: the route beats mixing the whole models)."""
    by_name = {r["name"]: r for r in rows}
    if "small" not in by_name or "large" not in by_name:
        return rows
    small, large = by_name["small"], by_name["large"]
    out = []
    for r in rows:
        s = large_share(r["cost"], small["cost"], large["cost"])
        mix_ppl = math.exp(s * math.log(large["ppl"]) + (1 - s) * math.log(small["ppl"]))
        out.append(r | {"mix_ppl": mix_ppl, "mix_top1": s * large["top1_agree"] + (1 - s) * small["top1_agree"],
                        "mix_kl": s * large["kl"] + (1 - s) * small["kl"], "mix_margin": mix_ppl / r["ppl"] - 1})
    return out
