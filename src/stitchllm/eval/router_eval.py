"""Quality/cost curves of routing policies, APGR and the cost needed to recover 95% of the quality gap."""

from __future__ import annotations

import torch

from stitchllm.routing.calibration import candidate_knobs
from stitchllm.routing.policies import RoutingBatch, make_policy


def policy_curve(name: str, batch: RoutingBatch, agree: torch.Tensor) -> list[list[float]]:
    """[[average cost, mean top-1 agreement], ...] over the policy's knob, sorted by cost. agree [N, R]."""
    policy = make_policy(name)
    costs = torch.tensor(batch.costs)
    points = set()
    for knob in candidate_knobs(policy, batch):
        idx = policy.choose(batch, knob)
        q = agree.gather(1, idx[:, None]).mean()
        points.add((round(float(costs[idx].mean()), 6), round(float(q), 6)))
    return [list(p) for p in sorted(points)]


def _pgr(q: float, q_small: float, q_large: float) -> float:
    return (q - q_small) / (q_large - q_small)


def apgr(curve: list[list[float]], c_small: float, q_small: float, q_large: float = 1.0) -> float:
    """Area under PGR(cost) from the small model's cost to 1, over that range; the curve is first made monotone
    (at any cost, the best PGR reached at that cost or below) and closed by (c_small, 0) and (1, 1)."""
    pts = [(c_small, 0.0)] + [(c, _pgr(q, q_small, q_large)) for c, q in curve if c >= c_small] + [(1.0, 1.0)]
    pts.sort()
    area, best = 0.0, 0.0
    envelope = []
    for c, p in pts:
        best = max(best, p)
        envelope.append((c, best))
    for (c0, p0), (c1, p1) in zip(envelope, envelope[1:]):
        area += (c1 - c0) * (p0 + p1) / 2
    return area / (1.0 - c_small)


def cost_at(curve: list[list[float]], q_small: float, pgr_target: float = 0.95, q_large: float = 1.0) -> float:
    """The lowest average cost at which the policy reaches PGR >= target (1.0 if only all-large does)."""
    hits = [c for c, q in curve if _pgr(q, q_small, q_large) >= pgr_target]
    return min(hits) if hits else 1.0


def evaluate_policies(batch: RoutingBatch, agree: torch.Tensor, names: list[str]) -> dict:
    """The `router eval` report: per policy its curve, APGR and cost at 95% PGR."""
    small, large = batch.route_names.index("small"), batch.route_names.index("large")
    c_small = batch.costs[small]
    q_small, q_large = float(agree[:, small].mean()), float(agree[:, large].mean())
    report = {}
    for name in names:
        curve = policy_curve(name, batch, agree)
        report[name] = {"apgr": apgr(curve, c_small, q_small, q_large), "cost_at_95": cost_at(curve, q_small, 0.95, q_large),
                        "curve": curve}
    return {"policies": report, "small": {"cost": c_small, "top1": q_small}, "large": {"cost": 1.0, "top1": q_large}}
