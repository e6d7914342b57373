"""Keep the routes on the quality/cost frontier: a route that costs more than another and is no better on the
build's validation text would never be worth serving (SN-Net serves only its Pareto-optimal stitches too)."""

from __future__ import annotations


def dominated(validation_kl: dict[str, float], costs: dict[str, float]) -> set[str]:
    """Names of routes whose validation KL to the large model some cheaper route matches or beats."""
    out, best = set(), float("inf")
    for name in sorted(costs, key=costs.get):
        if validation_kl[name] >= best:
            out.add(name)
        else:
            best = validation_kl[name]
    return out
