"""How long an engine step takes for the work in it, fitted online from the steps themselves: StepTimeModel for
one set of kernels, StepTimes for weights whose kernels change with the rows in a step."""

from __future__ import annotations


class StepTimeModel:
    """step seconds ~= per_read x reads + per_token x work.

    `reads`: the parameters the step read over `read_unit`, what one all-large step reads. Every block run reads
    its weights once whatever the batch; on a CPU that, and the Python around each block, is a step's fixed time,
    so a step that runs both models pays ~1.6x the fixed time of one that runs the large model alone.
    `work`: the step's tokens weighted by their route's cost (1.0 = one token through the whole large model).

    Least squares with exponential forgetting (each step's weight decays by `forget` per later step, ~1/(1-forget)
    steps of memory), so the fit follows the machine as its speed drifts. Decode-only and prefill-heavy steps
    differ in work by an order of magnitude, which is what separates the fixed time from the per-token time.

    Under steady load that separation is ill-conditioned: the steps of one regime read the same weights and carry
    similar work, and decode attention, which grows with the context, is not in the model. The free fit then
    moved the fixed time of a mixed step between 57 and 193 ms within one minute at 1.25x load (the startup
    profile measures 40-52 ms in bf16), and with it the plan, which spends what the fixed time leaves of the
    step budget. So once the profile has measured the fixed time directly (`hold_per_read`), only the per-token
    time is fitted online, through it.
    """

    def __init__(self, read_unit: float = 1.0, forget: float = 0.98, min_steps: int = 3):
        self.read_unit, self.forget, self.min_steps = read_unit, forget, min_steps
        self.steps = 0
        self.held_per_read: float | None = None  # seconds per all-large read of the weights, when measured
        self._uu = self._uw = self._ww = self._ut = self._wt = 0.0  # discounted sums of u*u, u*w, w*w, u*t, w*t

    def observe(self, params_read: float, work: float, seconds: float) -> None:
        f, u, w, t = self.forget, params_read / self.read_unit, work, seconds
        self.steps += 1
        self._uu, self._uw, self._ww = f * self._uu + u * u, f * self._uw + u * w, f * self._ww + w * w
        self._ut, self._wt = f * self._ut + u * t, f * self._wt + w * t

    def hold_per_read(self, seconds: float) -> None:
        """Fix the time per all-large read of the weights from now on (measured, not fitted)."""
        self.held_per_read = seconds

    def fit(self) -> tuple[float, float]:
        """(seconds per all-large read of the weights, seconds per cost-weighted token); (0, 0) until enough
        steps were seen."""
        if self.steps < self.min_steps or self._ww <= 0:
            return 0.0, 0.0
        if self.held_per_read is not None:  # least squares of t - per_read x u = per_token x w
            per_token = (self._wt - self.held_per_read * self._uw) / self._ww
            if per_token > 0:
                return self.held_per_read, per_token
        det = self._uu * self._ww - self._uw * self._uw
        if det > 1e-6 * self._uu * self._ww:  # the work per weight read varied enough to tell the two apart
            per_read = (self._ut * self._ww - self._wt * self._uw) / det
            per_token = (self._wt * self._uu - self._ut * self._uw) / det
            if per_token > 0 and per_read >= 0:
                return per_read, per_token
        return 0.0, self._wt / self._ww  # all steps alike (or a noisy fit): charge everything per token


class StepTimes:
    """One StepTimeModel per kernel regime: steps of fewer than `switch_rows` token rows, and steps of at least
    that many (None: the kernels never switch, one model serves all steps).

    Why: gguf weights on AMX switch kernels at 16 rows (models/int_dot.py). Below, integer dot products stream the
    4-bit weights (little fixed time, much per row); from 16 rows, tiles de-quantise every weight each step (much
    fixed time, little per row). Measured on `large` (Xeon, 2 cores, benchmarks/mixed_step.py): 2/8/15 rows
    135/238/370 ms, 16/32/48 rows 324/383/504 ms. One line through both, as the startup profile fitted from a
    1-row and a 32-row step, put the fixed time at 63 ms, and the plan thought a step of tens of rows on both
    models fit a 147 ms budget that one of `large` alone overruns."""

    def __init__(self, read_unit: float = 1.0, switch_rows: int | None = None):
        self.switch_rows = switch_rows
        self.few = StepTimeModel(read_unit)
        self.many = StepTimeModel(read_unit) if switch_rows else None

    def regime(self, rows: int) -> StepTimeModel:
        """The model for a step of `rows` token rows (prompt tokens and decoding requests together)."""
        if self.many is not None and rows >= self.switch_rows:
            return self.many
        return self.few

    def observe(self, rows: int, params_read: float, work: float, seconds: float) -> None:
        self.regime(rows).observe(params_read, work, seconds)
