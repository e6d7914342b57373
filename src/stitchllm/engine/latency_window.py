"""LatencyWindow: the recent latency samples the load controller reads, bounded by count and by age."""

from __future__ import annotations

from collections import deque

import numpy as np


class LatencyWindow:
    """The latest `size` samples (ms) that are at most `max_age_s` old.

    Count-bounded so the signal follows the current load within a step or two; age-bounded because samples from
    a load that has ended must not speak for the present: a server that was overloaded and then idle, or busy
    with requests pinned to a route, kept its burst's 10 s times to first token as its TTFT p90 until 64 new
    requests had arrived, and routed light traffic to the cheapest route meanwhile."""

    def __init__(self, size: int = 64, max_age_s: float = 30.0):
        self.max_age_s = max_age_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=size)  # (time, ms)

    def add(self, now: float, ms: float) -> None:
        self._samples.append((now, ms))

    def values(self, now: float) -> list[float]:
        while self._samples and self._samples[0][0] < now - self.max_age_s:
            self._samples.popleft()
        return [ms for _, ms in self._samples]

    def p90(self, now: float) -> float:
        """90th percentile of the current samples; 0 when there are none."""
        values = self.values(now)
        return float(np.percentile(values, 90)) if values else 0.0
