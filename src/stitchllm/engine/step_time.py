"""StepTimeModel: how long an engine step takes for the work in it, fitted online from the steps themselves."""

from __future__ import annotations


class StepTimeModel:
    """step seconds ~= overhead + per_token x work, where work = the step's tokens weighted by their route's cost
    (1.0 = one token through the whole large model).

    Least squares with exponential forgetting (each step's weight decays by `forget` per later step, ~1/(1-forget)
    steps of memory), so the fit follows the machine as its speed drifts. Decode-only and prefill-heavy steps
    differ in work by an order of magnitude, which is what separates the fixed overhead from the per-token time.
    """

    def __init__(self, forget: float = 0.98, min_steps: int = 3):
        self.forget, self.min_steps = forget, min_steps
        self.steps = 0
        self._n = self._w = self._t = self._ww = self._wt = 0.0  # discounted sums: 1, w, t, w^2, w*t

    def observe(self, work: float, seconds: float) -> None:
        f = self.forget
        self.steps += 1
        self._n, self._w, self._t = f * self._n + 1, f * self._w + work, f * self._t + seconds
        self._ww, self._wt = f * self._ww + work * work, f * self._wt + work * seconds

    def fit(self) -> tuple[float, float]:
        """(overhead seconds, seconds per cost-weighted token); (0, 0) until enough steps were seen."""
        if self.steps < self.min_steps or self._w <= 0:
            return 0.0, 0.0
        spread = self._n * self._ww - self._w * self._w
        if spread > 1e-6 * self._n * self._ww:  # the work varied enough to tell overhead from per-token time
            per_token = (self._n * self._wt - self._w * self._t) / spread
            overhead = (self._t - per_token * self._w) / self._n
            if per_token > 0 and overhead >= 0:
                return overhead, per_token
        return 0.0, self._t / self._w  # all steps alike (or a noisy fit): charge everything per token
