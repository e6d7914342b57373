"""LoadController: moves the routing operating point (a target average cost) with measured load, with hysteresis."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SLOConfig:
    """Service-level targets and the controller's dynamics (from the server's config)."""

    ttft_ms: float = 2000.0
    tpot_ms: float = 200.0
    queue_depth: int = 8  # waiting requests that count as full pressure
    high: float = 1.0  # pressure above this: shed cost
    low: float = 0.6  # pressure below this: give quality back; in between: hold (the hysteresis band)
    step: float = 0.1  # change of target cost per adjustment
    min_cost: float = 0.4  # never cheaper than this on average
    dwell_s: float = 2.0  # least time between two adjustments


@dataclass
class LoadSignal:
    """One observation of the server's load."""

    waiting: int
    ttft_p90_ms: float
    tpot_p90_ms: float


class LoadController:
    """Target average cost in [min_cost, 1]; starts at 1 (everything on the large model)."""

    def __init__(self, slo: SLOConfig):
        self.slo = slo
        self.target_cost = 1.0
        self._last_change = float("-inf")

    def pressure(self, s: LoadSignal) -> float:
        """The worst of queue depth, TTFT and TPOT, each as a fraction of its target."""
        return max(s.waiting / self.slo.queue_depth, s.ttft_p90_ms / self.slo.ttft_ms, s.tpot_p90_ms / self.slo.tpot_ms)

    def update(self, signal: LoadSignal, now: float) -> float:
        """Feed one observation at time `now` (seconds); returns the target cost to route at."""
        if now - self._last_change < self.slo.dwell_s:
            return self.target_cost
        p = self.pressure(signal)
        if p > self.slo.high and self.target_cost > self.slo.min_cost:
            self.target_cost = max(self.slo.min_cost, self.target_cost - self.slo.step)
            self._last_change = now
        elif p < self.slo.low and self.target_cost < 1.0:
            self.target_cost = min(1.0, self.target_cost + self.slo.step)
            self._last_change = now
        return self.target_cost
