"""Threshold calibration: the knob at which a policy's average cost on calibration requests meets a target."""

from __future__ import annotations

import torch

from stitchllm.routing.policies.base import Policy, RoutingBatch


def average_cost(policy: Policy, batch: RoutingBatch, knob: float) -> float:
    costs = torch.tensor(batch.costs)
    return float(costs[policy.choose(batch, knob)].mean())


def candidate_knobs(policy: Policy, batch: RoutingBatch) -> list[float]:
    """Every knob value at which the policy's choices can change, or a fine grid for probabilities."""
    losses = batch.true_loss if policy.name.startswith("oracle") else batch.predicted_loss
    if policy.name == "whole-model" and losses is not None:  # a loss threshold: choices change at loss values
        values = torch.unique(losses.flatten())
        return [0.0] + values.tolist() + [float(values.max()) + 1.0]
    priced = policy.name in ("router", "oracle", "oracle-whole-model")
    if priced and losses is not None:  # a price: where two routes' totals cross
        costs = torch.tensor(batch.costs)
        dl = losses[:, :, None] - losses[:, None, :]  # [N, R, R] loss of route a minus route b
        dc = (costs[None, :] - costs[:, None]).expand_as(dl)  # cost of route b minus route a
        prices = (dl / dc)[dc > 0]  # b dearer than a: the price at which their totals are equal
        values = torch.unique(prices[prices > 0])
        mids = (values[1:] + values[:-1]) / 2  # one price strictly inside each interval between crossings
        return [0.0] + mids.tolist() + [float(values.max()) + 1.0 if len(values) else 1.0]
    low, high = policy.knob_range
    return torch.linspace(low, high, 201).tolist()


def calibrate(policy: Policy, batch: RoutingBatch, target_cost: float) -> float:
    """The knob whose average cost on `batch` is closest to `target_cost` (cost falls as the knob rises)."""
    best_knob, best_gap = 0.0, float("inf")
    for knob in candidate_knobs(policy, batch):
        gap = abs(average_cost(policy, batch, knob) - target_cost)
        if gap < best_gap:
            best_knob, best_gap = knob, gap
    return best_knob
