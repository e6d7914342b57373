"""`oracle`: the router's rule on each request's *measured* losses (evaluation only: an upper bound)."""

import torch

from stitchllm.routing.policies.base import Policy, RoutingBatch, cheapest_priced


class OraclePolicy(Policy):
    """Knows each request's true per-route loss; no server can run it."""

    name = "oracle"
    knob_range = (0.0, 8.0)

    def choose(self, batch: RoutingBatch, knob: float) -> torch.Tensor:
        if batch.true_loss is None:
            raise ValueError("the oracle policy needs measured losses (evaluation only)")
        return cheapest_priced(batch.true_loss, batch.costs, knob)


class OracleWholeModelPolicy(Policy):
    """The oracle allowed only the two whole models: the best any RouteLLM-style router could do, the bound to
    compare `oracle` with to see what the stitched routes themselves are worth (evaluation only)."""

    name = "oracle-whole-model"
    knob_range = (0.0, 8.0)

    def choose(self, batch: RoutingBatch, knob: float) -> torch.Tensor:
        if batch.true_loss is None:
            raise ValueError("the oracle policy needs measured losses (evaluation only)")
        allowed = torch.zeros(len(batch.route_names), dtype=torch.bool)
        allowed[[batch.route_names.index("small"), batch.route_names.index("large")]] = True
        return cheapest_priced(batch.true_loss.masked_fill(~allowed, float("inf")), batch.costs, knob)
