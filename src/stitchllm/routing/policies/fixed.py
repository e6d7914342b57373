"""`fixed:<route>`: every request on one route (what a pinned request gets)."""

import torch

from stitchllm.errors import StitchError
from stitchllm.routing.policies.base import Policy, RoutingBatch


class FixedPolicy(Policy):
    """Always the named route; the knob does nothing."""

    name = "fixed"

    def __init__(self, route: str):
        self.route = route

    def choose(self, batch: RoutingBatch, knob: float) -> torch.Tensor:
        if self.route not in batch.route_names:
            raise StitchError(f"unknown route {self.route!r}; available: {', '.join(batch.route_names)}")
        return torch.full((batch.size,), batch.route_names.index(self.route))
