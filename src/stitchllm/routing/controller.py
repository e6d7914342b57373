"""LoadController: moves the routing operating point (a target average cost) with measured load, with hysteresis."""

from __future__ import annotations

from dataclasses import dataclass

from stitchllm.errors import StitchError


@dataclass(frozen=True, slots=True)
class SLOConfig:
    """Service-level targets and the controller's dynamics (from the server's config)."""

    ttft_ms: float = 2000.0
    tpot_ms: float = 200.0
    queue_depth: int = 8  # waiting requests that count as full pressure
    high: float = 1.0  # pressure above this: shed cost
    low: float = 0.75  # pressure below this: give quality back; in between: hold (the hysteresis band). At 0.6, a
    # plan that put everyone on the cheapest route at 1.25x load was held for a minute at TPOT p90 0.63-0.72 of
    # target, where a fixed 21% on `large` met every SLO (docs/history/BENCHMARKS-smollm2.md, session 20)
    step: float = 0.1  # change of the feedback correction per adjustment
    band: float = 0.05  # the planned cost must move by more than this before the target follows it
    min_cost: float = 0.0  # the quality floor: never cheaper than this on average, however high the load (an
    # operator's bound on how much quality overload may cost; at it, latency rather than quality gives way). 0, the
    # default: none but the cheapest route's cost. A floor above `small`'s cost keeps `large`'s rows in every step
    # under load, and on gguf weights such steps miss a TPOT target of twice `large`'s light-load p90
    # (docs/BENCHMARKS.md)
    dwell_s: float = 2.0  # least time between two adjustments (shedding when demand jumps does not wait)
    calm_s: float = 10.0  # the feedback gives quality beyond the plan only after pressure stayed below `low` this
    # long, and at least a request's lifetime (LoadSignal.request_life_s): latency lags a cut in cost by the time
    # the batch takes to fill, one lifetime; before that, low latency only says the batch is not full yet
    plan_tpot: float = 0.7  # plan for a step time of this fraction of the TPOT target
    max_utilisation: float = 0.85  # and never for more of the engine's time than this (Poisson bursts queue)
    max_slot_fill: float = 0.85  # nor for more of the engine's sequence slots in flight than this: a step that
    # meets the TPOT target can still be too slow to turn the slots over (LoadSignal.slot_step_s), and then
    # arrivals wait for a slot and miss the TTFT target (docs/history/BENCHMARKS-smollm2.md, session 21)

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_cost <= 1.0:
            raise StitchError(f"min_cost must be in [0, 1] (relative cost per token; 1 = always large, 0 = no "
                              f"floor), got {self.min_cost}")


@dataclass(frozen=True, slots=True)
class StepCosts:
    """A step's time in one kernel regime: a fixed time, which depends on the models the step runs (so it comes
    for the three ways to route), plus a time per token through the whole large model."""

    per_token_s: float
    large_s: float  # fixed time when every request takes the large model
    mixed_s: float  # ... when routes mix (both models' weights are read every step)
    cheapest_s: float  # ... when every request takes the cheapest route


@dataclass
class LoadSignal:
    """One observation of the server's load. Demand is 0 and the step costs None while unknown (the plan is then
    all-large)."""

    waiting: int
    ttft_p90_ms: float
    tpot_p90_ms: float
    demand_tok_s: float = 0.0  # tokens arriving per second (prompt + expected output)
    output_tok_s: float = 0.0  # of those, the expected output tokens: the decoding rows
    step: StepCosts | None = None  # the step-time model's costs (of steps below `batch_rows`, if the kernels switch)
    batch_step: StepCosts | None = None  # the costs of steps of `batch_rows` rows or more, where other kernels run
    batch_rows: int = 0
    steerable: bool = True  # some request in the engine has its route chosen by the policy (not pinned)
    request_life_s: float = 0.0  # how long a request now stays in the engine (expected output x TPOT)
    slot_step_s: float = 0.0  # the step time at which the arrivals would fill every sequence slot (Little's law:
    # slots / expected output tokens arriving per second); 0 while unknown


class LoadController:
    """Target average cost in [min_cost, 1]; starts at 1 (everything on the large model).

    Two parts. The *plan* (feed-forward) is the largest cost at which the measured demand fits the engine's
    measured speed within the TPOT target: it moves as soon as the arrival rate does, instead of waiting for
    queues to build. The *correction* (feedback, integral) steps the target below the plan while latency or
    the queue is above target and above it while they are well below target, so a plan that is wrong either
    way (the step-time model is linear, the engine is not) is fixed by what users see. The feedback holds while
    no request in the engine is the policy's to route (all pinned to a model by name): their latency says nothing
    about the target, and integrating it winds the correction up, e.g. to all-large after a minute of calm
    traffic pinned to the small model, which the next unpinned burst then pays for in queueing. An engine that
    ran empty forgets the correction (`forget_feedback`): it corrected the plan for a load that has ended.
    """

    def __init__(self, slo: SLOConfig, cheapest_cost: float = 0.0):
        self.slo, self.cheapest_cost = slo, cheapest_cost  # the cheapest route's cost: below it, all take it
        self.target_cost = 1.0
        self.correction = 0.0  # how far the feedback has moved the target from the plan (either way)
        self._last_change = float("-inf")
        self._calm_since: float | None = None  # since when pressure has been below `low`

    def forget_feedback(self) -> None:
        """Drop the correction and the calm seen so far (the engine ran empty): the next requests are routed by
        the plan for their own load. Otherwise a past overload's correction, undone one step per dwell, would
        send the first requests of light traffic after it to cheaper routes for seconds."""
        self.correction = 0.0
        self._calm_since = None

    def pressure(self, s: LoadSignal) -> float:
        """The worst of queue depth, TTFT and TPOT, each as a fraction of its target."""
        return max(s.waiting / self.slo.queue_depth, s.ttft_p90_ms / self.slo.ttft_ms, s.tpot_p90_ms / self.slo.tpot_ms)

    def planned_cost(self, s: LoadSignal) -> float:
        """The largest average cost the measured demand affords, choosing between the three ways to route.

        All large if that fits; else a mix, paying both models' fixed time every step; else, when a mix cannot
        even afford the cheapest route's cost, everyone on the cheapest route, which pays only its own."""
        if s.demand_tok_s <= 0 or s.step is None or s.step.per_token_s <= 0:
            return 1.0
        if self._affordable(s, "large_s") >= 1.0:
            return 1.0
        mixed = self._affordable(s, "mixed_s")
        if mixed > self.cheapest_cost:
            return mixed
        return min(self.cheapest_cost, self._affordable(s, "cheapest_s"))

    def _affordable(self, s: LoadSignal, way: str) -> float:
        """The largest cost one way to route (`way`: which fixed time it pays) affords in either kernel regime.
        Below the switch the decoding requests must stay fewer than its rows, so the step must also stay under
        rows / output tokens arriving per second (Little's law); from the switch on, the batch regime's times
        apply (the line below it would promise far too much there)."""
        step_s = self.slo.plan_tpot * self.slo.tpot_ms / 1000
        if s.slot_step_s > 0:
            step_s = min(step_s, self.slo.max_slot_fill * s.slot_step_s)
        if s.batch_step is None or s.output_tok_s <= 0:
            return self._afford(s, s.step, way, step_s)
        below = self._afford(s, s.step, way, min(step_s, s.batch_rows / s.output_tok_s))
        return max(below, self._afford(s, s.batch_step, way, step_s))

    def _afford(self, s: LoadSignal, costs: StepCosts, way: str, step_s: float) -> float:
        """With steps of a + b x work and D tokens/s arriving at average cost c, the batch grows until a step
        takes t = a / (1 - b D c) (each step serves the t x D c work that arrived during the one before). Keeping
        t under `step_s` and b D c under max_utilisation gives the largest affordable c."""
        if costs.per_token_s <= 0:
            return 0.0
        budget = 1.0 - getattr(costs, way) / step_s
        return min(self.slo.max_utilisation, budget) / (costs.per_token_s * s.demand_tok_s)

    def update(self, signal: LoadSignal, now: float) -> float:
        """Feed one observation at time `now` (seconds); returns the target cost to route at."""
        p, planned = self.pressure(signal), self.planned_cost(signal)
        calm_now = p < self.slo.low and signal.steerable
        self._calm_since = (now if self._calm_since is None else self._calm_since) if calm_now else None
        calm_for = max(self.slo.calm_s, signal.request_life_s)
        calm = self._calm_since is not None and now - self._calm_since >= calm_for
        # Feedback waits a dwell after every move, and skips the observation in which the plan itself falls:
        # latency lags a rise in demand, so "latency is low" then says nothing about the new plan.
        plan_falls = planned + self.correction < self.target_cost - self.slo.band
        settled = now - self._last_change >= self.slo.dwell_s and not plan_falls
        # Its own cuts it undoes as soon as latency is low; quality beyond the plan it gives only after calm_s.
        may_rise = (p < self.slo.low and self.correction < 0) or calm
        feedback = settled and signal.steerable
        # Below the floor a cut changes nothing (everyone already takes the cheapest route, or the target is at
        # min_cost), so the correction stops there: cuts made past it would each have to be undone, one per
        # dwell, before the target could rise again (wind-up), and under a load that keeps pressure in the band
        # they never are, which held the all-cheapest regime for the rest of a load the plan could have mixed.
        floor = max(self.slo.min_cost, self.cheapest_cost)
        # A plan at the cheapest route's cost says no mix meets the TPOT target at this demand: both models' fixed
        # time is over the step budget, or leaves too little of it. Calm latency then only says the cheap regime
        # is fast; a feedback rise above it would mix again and put both models' fixed time into every step of
        # every request in flight. So feedback raises the target within the plan's regime only; leaving the
        # all-cheapest regime is the plan's to decide, when demand falls.
        ceiling = 1.0 if planned > self.cheapest_cost else floor
        self.correction = max(self.correction, min(0.0, floor - planned))
        if feedback and p > self.slo.high and planned + self.correction > floor:
            self.correction = max(round(self.correction - self.slo.step, 9), floor - planned)
        elif feedback and may_rise and planned + self.correction < ceiling:
            if self.correction >= 0:  # a step beyond the plan shows in latency a lifetime later: see calm anew
                self._calm_since = now
            # undoing its own cuts stops at the plan: going beyond it takes calm (a clamped cut is not 0.1)
            rise = self.correction + self.slo.step
            self.correction = round(min(rise, 0.0) if self.correction < 0 else rise, 9)
        elif feedback and calm and planned >= 1.0:
            self.correction = 0.0  # all-large by plan and calm: nothing left to correct (no wind-up)
        if ceiling < 1.0:
            self.correction = min(self.correction, ceiling - planned)
        want = round(min(1.0, max(self.slo.min_cost, planned + self.correction)), 9)  # a clamp lands on the floor
        # Small moves wait until they add up to more than the band, except onto the floor, into the all-cheapest
        # regime (a step that no longer reads both models: not a small move) or back to all-large.
        falling = want < self.target_cost - self.slo.band or want <= floor < self.target_cost
        rising = settled and (want > self.target_cost + self.slo.band or self.target_cost < want == 1.0)
        if falling or rising:
            self.target_cost = want
            self._last_change = now
        return self.target_cost
