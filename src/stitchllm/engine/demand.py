"""DemandMeter: the work arriving at the engine, in tokens per second, over sliding windows."""

from __future__ import annotations

from collections import deque
from typing import NamedTuple


class Arrival(NamedTuple):
    time: float
    tokens: int  # prompt + expected output
    output: int  # expected output alone


class DemandMeter:
    """Each arrival brings its prompt plus the output it is expected to generate. The output length is not known
    at arrival: it is estimated as the mean output of recently finished requests, capped by the request's own
    max_tokens (before anything has finished, max_tokens itself: an upper bound, so the estimate errs towards
    shedding load).

    The rate is the larger of two windows': a rise shows within `window_s`, a fall only once it has lasted
    `hold_s`. Poisson arrivals over 10 s read 20% under their rate now and then, and the plan must not give the
    large model back on such a dip: the requests it would admit live for tens of seconds, long after it ended.
    """

    def __init__(self, window_s: float = 10.0, hold_s: float = 30.0, min_span_s: float = 2.0):
        self.window_s, self.hold_s, self.min_span_s = window_s, max(hold_s, window_s), min_span_s
        self._arrivals: deque[Arrival] = deque()
        self._outputs: deque[int] = deque(maxlen=64)  # output lengths of recently finished requests
        self._first: float | None = None

    def expected_output(self, max_tokens: int) -> int:
        if not self._outputs:
            return max_tokens
        return min(max_tokens, round(sum(self._outputs) / len(self._outputs)))

    def arrive(self, now: float, prompt_tokens: int, max_tokens: int) -> None:
        """The first arrival after the meter started (or the engine ran empty) opens the watch and is not counted:
        one request is no evidence of a rate, and read as its tokens over min_span_s it sent every lone request
        after an idle spell to the cheapest route (a chat answer of ~250 tokens reads as 125 tokens/s, more than
        `large` decodes on 2 cores). Arrivals after it, a burst included, count from there."""
        if self._first is None:
            self._first = now
            return
        output = self.expected_output(max_tokens)
        self._arrivals.append(Arrival(now, prompt_tokens + output, output))

    def finished(self, output_tokens: int) -> None:
        self._outputs.append(output_tokens)

    def forget_arrivals(self) -> None:
        """The engine ran empty: the load those arrivals made has been served, and holding it for `hold_s` would
        route the next light traffic to cheaper routes. (Learned output lengths stay: they describe requests.)"""
        self._arrivals.clear()
        self._first = None

    def tokens_per_s(self, now: float) -> float:
        """Prompt and expected output tokens arriving per second."""
        return self._held_rate(now, "tokens")

    def output_tokens_per_s(self, now: float) -> float:
        """Expected output tokens arriving per second: by Little's law, x the step time = sequences in flight."""
        return self._held_rate(now, "output")

    def _held_rate(self, now: float, field: str) -> float:
        while self._arrivals and self._arrivals[0].time < now - self.hold_s:
            self._arrivals.popleft()
        if self._first is None:
            return 0.0
        return max(self._rate(now, self.window_s, field), self._rate(now, self.hold_s, field))

    def _rate(self, now: float, window_s: float, field: str) -> float:
        # A young meter divides by the time it has watched (at least min_span_s, so one early burst is not
        # read as a rate of thousands per second).
        span = min(window_s, max(self.min_span_s, now - self._first))
        return sum(getattr(a, field) for a in self._arrivals if a.time >= now - window_s) / span
