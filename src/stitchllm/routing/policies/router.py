"""`router`: per request, the route with the least predicted loss + price x cost."""

import torch

from stitchllm.routing.policies.base import Policy, RoutingBatch, cheapest_priced


class RouterPolicy(Policy):
    """Per-request choice over every route of the family, from the router model's predictions.

    The knob is a price on cost rather than a loss threshold ("cheapest route within the threshold"): with
    several routes, a threshold sends a request to the cheapest route under the bar even when a slightly
    dearer one loses far less. On held-out requests of the default family (docs/ROUTING.md) the threshold rule
    scored APGR 0.24, the priced rule 0.51.
    """

    name = "router"
    knob_range = (0.0, 8.0)

    def choose(self, batch: RoutingBatch, knob: float) -> torch.Tensor:
        return cheapest_priced(batch.predicted_loss, batch.costs, knob)
