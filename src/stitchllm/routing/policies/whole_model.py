"""`whole-model`: the same router, allowed only the two whole models (the RouteLLM-style baseline)."""

import torch

from stitchllm.routing.policies.base import Policy, RoutingBatch, cheapest_within


class WholeModelPolicy(Policy):
    """Small when its predicted loss is within the threshold, large otherwise."""

    name = "whole-model"
    knob_range = (0.0, 8.0)

    def choose(self, batch: RoutingBatch, knob: float) -> torch.Tensor:
        allowed = [batch.route_names.index("small"), batch.route_names.index("large")]
        return cheapest_within(batch.predicted_loss, knob, allowed)
