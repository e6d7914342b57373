"""`random`: with probability p the cheap route (default: the whole small model), the large model otherwise."""

import torch

from stitchllm.routing.policies.base import Policy, RoutingBatch


class RandomPolicy(Policy):
    """Request-blind baseline: its quality/cost curve is the straight line between its two routes."""

    name = "random"
    knob_range = (0.0, 1.0)

    def __init__(self, cheap_route: str = "small"):
        self.cheap_route = cheap_route

    def choose(self, batch: RoutingBatch, knob: float) -> torch.Tensor:
        cheap = torch.rand(batch.size, generator=batch.generator) < knob
        names = batch.route_names
        return torch.where(cheap, names.index(self.cheap_route), names.index("large"))
