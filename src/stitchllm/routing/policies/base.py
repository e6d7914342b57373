"""Policy: picks a route per request from per-route loss estimates and a knob (threshold or probability)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch


@dataclass
class RoutingBatch:
    """What a policy may look at for N requests. Routes are ordered by cost, cheapest first, large last."""

    route_names: list[str]
    costs: list[float]  # relative FLOPs per token of each route
    predicted_loss: torch.Tensor | None = None  # [N, R] from the router model
    true_loss: torch.Tensor | None = None  # [N, R] measured; only evaluation has it (the oracle's privilege)
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))

    @property
    def size(self) -> int:
        t = self.predicted_loss if self.predicted_loss is not None else self.true_loss
        return 1 if t is None else t.shape[0]


class Policy(ABC):
    """Chooses a route per request; higher `knob` means cheaper on average (a loss threshold, a price on cost, or
    a probability)."""

    name: str = ""
    knob_range: tuple[float, float] = (0.0, 1.0)

    @abstractmethod
    def choose(self, batch: RoutingBatch, knob: float) -> torch.Tensor:
        """[N] indices into batch.route_names."""


def cheapest_within(losses: torch.Tensor, threshold: float, allowed: list[int]) -> torch.Tensor:
    """losses [N, R] -> [N]: per request, the cheapest allowed route with loss <= threshold, else the last allowed."""
    ok = losses[:, allowed] <= threshold  # [N, A]
    ok[:, -1] = True  # the most expensive allowed route always qualifies
    first = ok.to(torch.uint8).argmax(dim=1)  # argmax returns the first maximal index
    return torch.tensor(allowed)[first]


def cheapest_priced(losses: torch.Tensor, costs: list[float], price: float) -> torch.Tensor:
    """losses [N, R] -> [N]: per request, the route minimising loss + price * cost (ties go to the cheaper route).
    price 0 buys the least loss; a higher price trades loss for cost — the Lagrangian of "least average loss
    at a given average cost", which is optimal per request when the losses are right."""
    return (losses + price * torch.tensor(costs)).argmin(dim=1)  # argmin returns the first (cheapest) minimum
