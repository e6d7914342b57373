"""`router`: the cheapest route whose predicted loss is within the threshold."""

import torch

from stitchllm.routing.policies.base import Policy, RoutingBatch, cheapest_within


class RouterPolicy(Policy):
    """Per-request choice over every route of the family, from the router model's predictions."""

    name = "router"
    knob_range = (0.0, 8.0)

    def choose(self, batch: RoutingBatch, knob: float) -> torch.Tensor:
        return cheapest_within(batch.predicted_loss, knob, list(range(len(batch.route_names))))
