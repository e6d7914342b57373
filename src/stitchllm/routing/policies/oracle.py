"""`oracle`: the cheapest route whose *measured* loss is within the threshold (evaluation only: an upper bound)."""

import torch

from stitchllm.routing.policies.base import Policy, RoutingBatch, cheapest_within


class OraclePolicy(Policy):
    """Knows each request's true per-route loss; no server can run it."""

    name = "oracle"
    knob_range = (0.0, 8.0)

    def choose(self, batch: RoutingBatch, knob: float) -> torch.Tensor:
        if batch.true_loss is None:
            raise ValueError("the oracle policy needs measured losses (evaluation only)")
        return cheapest_within(batch.true_loss, knob, list(range(len(batch.route_names))))
