"""Keep the routes on the quality/cost frontier: a route that costs as much as another or more and is not better
on the build's validation text would never be worth serving (SN-Net keeps only its Pareto-optimal stitches too)."""

from __future__ import annotations

QUALITY_KEYS = ("kl", "ppl")  # both lower-is-better: distance to the large model, and fit to the text itself


def dominated(validation: dict[str, dict[str, float]], costs: dict[str, float]) -> set[str]:
    """Names of stitched routes that do not beat, on every quality key, each kept route of lower or equal cost.
    The whole models always stay: they are the two ends every policy needs."""
    out, last = set(), None
    for name in sorted(costs, key=lambda n: (costs[n], *(validation[n][k] for k in QUALITY_KEYS))):
        worse = last is not None and any(validation[name][k] >= last[k] for k in QUALITY_KEYS)
        if worse and name not in ("small", "large"):
            out.add(name)
        else:
            last = validation[name]
    return out
