"""The load controller's plan: step-time fit, demand meter, and the cost they afford under a simulated load."""

import dataclasses

import pytest

from stitchllm.engine.demand import DemandMeter
from stitchllm.engine.latency_window import LatencyWindow
from stitchllm.engine import warmup
from stitchllm.engine.step_time import StepTimeModel, StepTimes
from stitchllm.engine.work import RunnerOutput
from stitchllm.routing.controller import LoadController, LoadSignal, SLOConfig, StepCosts


def test_step_time_model_separates_fixed_time_per_weight_read_from_per_token_time():
    model = StepTimeModel(read_unit=100.0)
    assert model.fit() == (0.0, 0.0)  # nothing seen: unknown
    for i in range(300):
        reads = (100.0, 160.0, 60.0)[i % 3]  # all-large, mixed and all-small steps: 1.0, 1.6 and 0.6 units
        work = 64.0 if i % 5 else 600.0  # decode steps and the odd prefill-heavy one
        model.observe(reads, work, 0.02 * reads / 100 + 0.003 * work + (1e-4 if i % 2 else -1e-4))
    per_read, per_token = model.fit()
    assert per_read == pytest.approx(0.02, rel=0.05) and per_token == pytest.approx(0.003, rel=0.01)


def test_step_time_model_holds_a_measured_fixed_time_and_fits_only_per_token_time_through_it():
    """Steady load: every step of one regime (all-small, 0.6 units) with 90-110 tokens, whose time per token grows
    with the batch (decode attention). From such steps a free fit cannot separate the fixed time from the
    per-token time (the reads never vary, the work barely), and whatever it guesses the plan multiplies by
    1.6 / 0.6 for a mixed step; held at its measured value, the fixed time stays right."""
    truth = lambda reads, work: 0.02 * reads + 0.003 * work * (1 + work / 200)  # noqa: E731
    model = StepTimeModel(read_unit=1.0)
    model.hold_per_read(0.02)
    for i in range(200):
        work = 90.0 + (i % 21)
        model.observe(0.6, work, truth(0.6, work))
    per_read, per_token = model.fit()
    assert per_read == 0.02
    assert 1.6 * per_read + 100 * per_token == pytest.approx(truth(1.6, 100.0), rel=0.02)  # a mixed step


def test_step_time_model_with_identical_steps_charges_per_token():
    model = StepTimeModel()
    for _ in range(20):
        model.observe(1.0, 100.0, 0.5)
    assert model.fit() == (0.0, pytest.approx(0.005))


class _TwoKernelMachine:
    """A runner whose steps take exactly the time gguf weights on AMX take, in shape (engine/step_time.py): below
    16 rows 60 ms + 20 ms a row (integer dot products), from 16 rows 250 ms + 4 ms a row (tiles that de-quantise
    every weight each step). Its clock is the profile's."""

    def __init__(self):
        self.now = 0.0

    def step_s(self, rows: int) -> float:
        return 0.06 + 0.02 * rows if rows < 16 else 0.25 + 0.004 * rows

    def run(self, items) -> RunnerOutput:
        self.now += self.step_s(sum(len(it.token_ids) for it in items))
        return RunnerOutput(params_read=1.0)

    def release(self, request_id: str) -> None:
        pass


@pytest.mark.parametrize("switch_rows, held", [(16, (0.06, 0.25)), (None, (0.0704, None))])
def test_startup_profile_holds_the_fixed_time_of_each_kernel_regime(monkeypatch, switch_rows, held):
    """Profiled per regime, each fixed time is that regime's own. Profiled as one line from 1 row to 32 (no switch
    known), the fixed time is 70 ms: a plan with it thinks a 32-row step takes 70 ms + 32 x its per-token time,
    where it takes 378."""
    machine = _TwoKernelMachine()
    monkeypatch.setattr(warmup.time, "monotonic", lambda: machine.now)
    times = StepTimes(read_unit=1.0, switch_rows=switch_rows)
    warmup.profile_step_time(machine, times, large_slots=64, max_tokens=128, token_id=0)
    assert times.few.held_per_read == pytest.approx(held[0], abs=1e-4)
    if switch_rows:
        assert times.many.held_per_read == pytest.approx(held[1])
        assert times.few.fit()[1] == pytest.approx(0.02) and times.many.fit()[1] == pytest.approx(0.004)
        assert times.regime(15) is times.few and times.regime(16) is times.many


def test_plan_takes_each_kernel_regime_at_its_own_fixed_time():
    """Costs shaped as `large` on gguf with AMX (_TwoKernelMachine; mixed 1.32x, cheapest 0.32x the fixed time),
    prompts as long as outputs, a 140 ms step budget. Below 16 rows a step is cheap to start and dear per row;
    from 16 rows on `large`'s fixed time alone (250 ms) is over the budget, so a batch of tens of rows can only
    be all-cheapest."""
    ctl = LoadController(SLOConfig(tpot_ms=200.0, plan_tpot=0.7), cheapest_cost=0.32)
    few, batch = StepCosts(0.02, 0.06, 0.0792, 0.0192), StepCosts(0.004, 0.25, 0.33, 0.08)

    def plan(demand: float) -> float:
        return ctl.planned_cost(LoadSignal(0, 0.0, 0.0, demand, demand / 2, few, batch, batch_rows=16))

    assert plan(16.0) == 1.0  # 8 requests' tokens a second: a step of 60 / (1 - 0.32) = 88 ms holds 0.7 rows
    assert plan(40.0) == pytest.approx((1 - 79.2 / 140) / (0.02 * 40))  # all large overruns; a mix at 0.54
    assert plan(72.0) == 0.32  # a mix would afford less than the cheapest route: all take it
    # 200 decoding tokens/s hold 16 rows at 80 ms steps: below that the integer kernel affords 0.10; the tiles,
    # at the cheapest route's own fixed time, 0.27 (both below the cheapest route's cost: what demand allows)
    assert plan(400.0) == pytest.approx((1 - 80 / 140) / (0.004 * 400))


def test_demand_meter_learns_output_length():
    meter = DemandMeter(window_s=10.0, hold_s=10.0)
    assert meter.tokens_per_s(0.0) == 0.0
    for i in range(40):  # 2 requests/s of 64 prompt tokens, max_tokens 128: 384 tokens/s expected
        meter.arrive(i * 0.5, 64, 128)
    assert meter.tokens_per_s(19.5) == pytest.approx(384, rel=0.06)
    for _ in range(10):
        meter.finished(32)  # they stop after 32 tokens: later arrivals are expected to as well
    for i in range(40, 80):
        meter.arrive(i * 0.5, 64, 128)
    assert meter.tokens_per_s(39.5) == pytest.approx(192, rel=0.06)
    assert meter.output_tokens_per_s(39.5) == pytest.approx(2 * 32, rel=0.06)  # x the step time: in flight
    assert meter.expected_output(16) == 16  # never more than the request allows


def test_demand_meter_shows_a_rise_at_once_and_a_fall_once_it_has_lasted():
    meter = DemandMeter(window_s=10.0, hold_s=30.0)
    arrivals = [i * 0.5 for i in range(80)]  # 2 requests/s for 40 s (192 tokens each: 384 tokens/s)
    arrivals += [40 + i * 0.25 for i in range(40)]  # 4 requests/s for 10 s
    arrivals += [50.0 + i for i in range(31)]  # 1 request/s for 30 s
    for t in arrivals:
        meter.arrive(t, 64, 128)
        if t == 39.5:
            assert meter.tokens_per_s(t) == pytest.approx(384, rel=0.06)
        if t == 49.75:  # the rise, in the 10 s window
            assert meter.tokens_per_s(t) == pytest.approx(768, rel=0.06)
        if t == 60.0:  # the fall is 10 s old: the 30 s window still holds the busier 20 s before it
            assert meter.tokens_per_s(t) == pytest.approx((20 + 40 + 11) * 192 / 30)
        if t == 80.0:  # and shows once it has lasted 30 s
            assert meter.tokens_per_s(t) == pytest.approx(192, rel=0.1)
    meter.forget_arrivals()  # the engine ran empty: what arrived has been served
    assert meter.tokens_per_s(81.0) == 0.0
    meter.arrive(90.0, 64, 128)
    assert meter.tokens_per_s(91.0) == 0.0  # one request after an idle spell is no rate
    meter.arrive(90.5, 64, 128)
    assert meter.tokens_per_s(91.0) == pytest.approx(192 / 2)  # the next one is; a young meter divides by >= 2 s


def _signal(demand: float, pressure: float = 0.0, steerable: bool = True) -> LoadSignal:
    """The engine of these tests: steps of 20 ms + 3 ms per large-model token (333 tokens/s at most), whatever
    the models in them."""
    return LoadSignal(waiting=0, ttft_p90_ms=0.0, tpot_p90_ms=pressure * 200.0, demand_tok_s=demand,
                      step=StepCosts(0.003, 0.02, 0.02, 0.02), steerable=steerable)


def test_plan_pays_both_models_fixed_time_when_routes_mix():
    """3 ms per large-model token; a step's fixed time 50 ms all-large, 80 ms mixed, 30 ms all on the cheapest
    route (cost 0.6). Planning for 140 ms steps, a regime affords cost (1 - fixed / 140 ms) / (3 ms x demand)."""
    ctl = LoadController(SLOConfig(tpot_ms=200.0, plan_tpot=0.7, max_utilisation=1.0), cheapest_cost=0.6)

    def plan(demand: float) -> float:
        return ctl.planned_cost(LoadSignal(0, 0.0, 0.0, demand, step=StepCosts(0.003, 0.05, 0.08, 0.03)))

    assert plan(200.0) == 1.0  # all large: (1 - 50/140) / 0.6 = 1.07
    assert plan(220.0) == pytest.approx((1 - 80 / 140) / 0.66)  # large no longer fits; a mix affords 0.649
    # a mix would afford 0.571, below the cheapest route: mixing is worse than not, so everyone takes it
    assert plan(250.0) == 0.6
    assert plan(500.0) == pytest.approx((1 - 30 / 140) / 1.5)  # even the cheapest route falls short


def test_plan_keeps_the_requests_in_flight_within_the_sequence_slots():
    """Steps of 20 ms + 3 ms per large-model token, 200 tokens/s of demand: the TPOT target alone (140 ms steps)
    affords all-large, t = 20 / (1 - 0.6) = 50 ms. But if the arrivals fill every slot at 40 ms steps (Little's
    law: slots / output tokens per second), the plan keeps steps under max_slot_fill x 40 ms = 34 ms, which
    affords only (1 - 20 / 34) / 0.6."""
    ctl = LoadController(SLOConfig(tpot_ms=200.0, plan_tpot=0.7, max_utilisation=1.0, max_slot_fill=0.85))
    assert ctl.planned_cost(dataclasses.replace(_signal(200.0), slot_step_s=1.0)) == 1.0  # slots to spare
    assert ctl.planned_cost(dataclasses.replace(_signal(200.0), slot_step_s=0.04)) == pytest.approx(
        (1 - 0.02 / 0.034) / 0.6)


def test_controller_plans_for_demand_at_once_and_gives_back_after_dwell():
    ctl = LoadController(SLOConfig(tpot_ms=200.0, dwell_s=2.0, min_cost=0.4))
    assert ctl.update(_signal(100.0), 0.0) == 1.0  # 30% of the engine: all large
    # 400 tokens/s would need 1.2x the engine at full cost: the plan (0.85 / (0.003 x 400) = 0.708) applies
    # on the very next observation, before any latency has risen
    assert ctl.update(_signal(400.0), 0.1) == pytest.approx(0.85 / 1.2)
    assert ctl.update(_signal(390.0), 0.2) == pytest.approx(0.85 / 1.2)  # within the band: no flicker
    assert ctl.update(_signal(100.0), 1.0) == pytest.approx(0.85 / 1.2)  # giving quality back waits the dwell
    assert ctl.update(_signal(100.0), 2.2) == 1.0


def test_controller_enters_the_all_cheapest_regime_without_waiting_for_the_band():
    """A plan at or below the cheapest route's cost means every request takes it, and steps stop reading the
    large model's weights: a different regime, not a small move, so the band must not hold the mix above it."""
    ctl = LoadController(SLOConfig(tpot_ms=200.0, dwell_s=1.0, min_cost=0.4), cheapest_cost=0.6)
    assert ctl.update(_signal(442.7), 0.0) == pytest.approx(0.85 / (0.003 * 442.7))  # a mix at 0.640
    # demand 8% higher: the plan, 0.590, is within the 0.05 band of 0.640 but below the cheapest route's cost
    assert ctl.update(_signal(480.0), 5.0) == pytest.approx(0.85 / (0.003 * 480.0))
    assert ctl.update(_signal(470.0), 6.0) == pytest.approx(0.85 / (0.003 * 480.0))  # back up: the band holds


def test_controller_corrects_an_optimistic_plan_with_latency_feedback():
    ctl = LoadController(SLOConfig(tpot_ms=200.0, dwell_s=1.0, min_cost=0.4))
    planned = 0.85 / (0.003 * 400)
    assert ctl.update(_signal(400.0), 0.0) == pytest.approx(planned)
    # the plan was wrong (TPOT at 1.5x its target): step below it, one step per dwell, not past the floor
    costs = [ctl.update(_signal(400.0, pressure=1.5), t) for t in (1.0, 1.5, 2.0, 3.0, 4.0, 5.0)]
    assert costs[:3] == [pytest.approx(planned - 0.1), pytest.approx(planned - 0.1), pytest.approx(planned - 0.2)]
    assert costs[-1] == pytest.approx(0.4) and ctl.correction == pytest.approx(0.4 - planned)  # floored, no more
    # latency back well under target and demand gone: the correction unwinds and the target returns to 1
    for t in range(6, 30):
        ctl.update(_signal(50.0, pressure=0.3), float(t))
    assert ctl.target_cost == 1.0 and ctl.correction == 0.0


def test_controller_cuts_no_further_than_the_cheapest_route_so_one_calm_moment_restores_the_plan():
    """Below the cheapest route's cost every request takes it: a cut past it changes nothing, and undoing such
    cuts one per dwell held the all-cheapest regime under a load whose pressure then sat in the band."""
    ctl = LoadController(SLOConfig(tpot_ms=200.0, dwell_s=1.0, min_cost=0.4), cheapest_cost=0.6)
    planned = 0.85 / (0.003 * 400)  # 0.708: a mix
    assert ctl.update(_signal(400.0), 0.0) == pytest.approx(planned)
    costs = [ctl.update(_signal(400.0, pressure=1.5), float(t)) for t in range(1, 10)]  # overloaded for 9 s
    assert costs[0] == pytest.approx(planned - 0.1) and costs[-1] == pytest.approx(0.6)  # onto the floor, no lower
    assert ctl.correction == pytest.approx(0.6 - planned)
    for t in range(10, 20):  # in the band: hold
        assert ctl.update(_signal(400.0, pressure=0.8), float(t)) == pytest.approx(0.6)
    assert ctl.update(_signal(400.0, pressure=0.5), 20.0) == pytest.approx(0.7)  # one calm moment: a step up
    assert ctl.correction == pytest.approx(0.7 - planned)
    # a plan that falls to the floor takes the correction made above it along: nothing is owed below the floor
    assert ctl.update(_signal(480.0, pressure=0.8), 22.0) == pytest.approx(0.85 / (0.003 * 480))  # all cheapest
    assert ctl.correction == 0.0


def test_controller_feedback_does_not_lift_the_target_out_of_the_all_cheapest_regime():
    """Both models' fixed time (150 ms) is over the 140 ms step budget: no mix can meet the TPOT target, so the
    plan puts everyone on the cheapest route (cost 0.6). Calm latency there says only that the cheap regime is
    fast; rising above it would mix again. The target leaves the regime when the plan does (demand falls)."""
    ctl = LoadController(SLOConfig(tpot_ms=200.0, dwell_s=1.0, min_cost=0.4, calm_s=3.0), cheapest_cost=0.6)

    def update(demand: float, t: float) -> float:
        return ctl.update(LoadSignal(0, 0.0, 0.3 * 200.0, demand, step=StepCosts(0.003, 0.05, 0.15, 0.03)), t)

    assert update(300.0, 0.0) == 0.6  # all large affords (1 - 50/140) / 0.9 = 0.71; a mix nothing
    assert [update(300.0, float(t)) for t in range(1, 30)] == [0.6] * 29  # calm for 29 s: held
    assert ctl.correction == 0.0
    assert update(100.0, 31.0) == 1.0  # 0.643 / 0.3: all large by plan


def test_controller_routes_by_the_plan_once_it_forgets_a_past_overloads_correction():
    ctl = LoadController(SLOConfig(tpot_ms=200.0, dwell_s=1.0, min_cost=0.4))
    for t in range(6):  # overloaded at 400 tokens/s: floored, 0.4 below a plan of 0.708
        ctl.update(_signal(400.0, pressure=1.5), float(t))
    assert ctl.target_cost == pytest.approx(0.4) and ctl.correction == pytest.approx(0.4 - 0.85 / 1.2)
    ctl.forget_feedback()  # the engine ran empty; light traffic arrives
    assert ctl.update(_signal(50.0, pressure=0.3), 60.0) == 1.0  # all large at once, not 0.1 per dwell


def test_controller_gives_back_quality_a_pessimistic_plan_withheld_once_calm_for_a_while():
    ctl = LoadController(SLOConfig(tpot_ms=200.0, dwell_s=1.0, min_cost=0.4, calm_s=3.0))
    planned = 0.85 / (0.003 * 400)
    assert ctl.update(_signal(400.0), 0.0) == pytest.approx(planned)
    # latency far below target at the planned cost: the engine is faster than the plan thinks, so step up, but
    # only once it has stayed low for calm_s (latency lags a cut in cost while the batch fills), and after each
    # step only once it has stayed low for calm_s again (the step's own requests take that long to show)
    costs = [ctl.update(_signal(400.0, pressure=0.3), float(t)) for t in range(1, 12)]
    steps = [0.0] * 2 + [0.1] * 3 + [0.2] * 3
    assert costs[:8] == [pytest.approx(planned + step) for step in steps]
    assert costs[-1] == 1.0 and ctl.correction == pytest.approx(0.3)  # up to all-large, and no further wind-up
    assert ctl.update(_signal(400.0, pressure=0.8), 12.0) == 1.0  # inside the band: hold


def test_controller_calm_lasts_at_least_a_request_lifetime_before_quality_goes_beyond_the_plan():
    """While the batch fills after a cut in cost (one request lifetime), latency is low because the batch is not
    full yet, not because the plan is pessimistic: raising cost on it would overload the engine a lifetime later."""
    ctl = LoadController(SLOConfig(tpot_ms=200.0, dwell_s=1.0, min_cost=0.4, calm_s=3.0))
    planned = 0.85 / (0.003 * 400)

    def update(t: float) -> float:
        return ctl.update(dataclasses.replace(_signal(400.0, pressure=0.3), request_life_s=20.0), t)

    assert [update(float(t)) for t in range(20)] == [pytest.approx(planned)] * 20
    assert update(20.0) == pytest.approx(planned + 0.1)


def test_controller_feedback_holds_while_every_request_is_pinned():
    """Requests pinned to a model by name are not the controller's to route: a minute of them, calm or
    overloaded, must not wind the correction up or down for the unpinned traffic that follows."""
    ctl = LoadController(SLOConfig(tpot_ms=200.0, dwell_s=1.0, min_cost=0.4, calm_s=3.0))
    planned = 0.85 / (0.003 * 400)
    assert ctl.update(_signal(400.0), 0.0) == pytest.approx(planned)
    for t in range(1, 61):  # pinned to the small model: latency far below target
        assert ctl.update(_signal(400.0, pressure=0.3, steerable=False), float(t)) == pytest.approx(planned)
    for t in range(61, 121):  # pinned to the large model: overloaded
        assert ctl.update(_signal(400.0, pressure=2.0, steerable=False), float(t)) == pytest.approx(planned)
    assert ctl.correction == 0.0
    # the policy's own requests again: calm has to be seen with them, calm_s long, before quality goes up
    costs = [ctl.update(_signal(400.0, pressure=0.3), t) for t in (121.0, 122.0, 123.0, 124.0)]
    assert costs == [pytest.approx(planned)] * 3 + [pytest.approx(planned + 0.1)]


def test_latency_window_keeps_the_latest_samples_and_forgets_old_ones():
    window = LatencyWindow(size=3, max_age_s=30.0)
    for t, ms in enumerate([9000.0, 100.0, 200.0, 300.0]):  # the first pushed out by count
        window.add(float(t), ms)
    assert window.values(3.0) == [100.0, 200.0, 300.0]
    assert window.p90(3.0) == pytest.approx(280.0)
    window.add(40.0, 50.0)  # an idle gap: the burst's samples are older than 30 s and no longer count
    assert window.values(40.0) == [50.0] and window.p90(40.0) == 50.0
    assert window.p90(100.0) == 0.0
