"""Startup profiling: time a few steps of the large model so the load controller can plan from the first request.

Without it the step-time model knows nothing until several real steps have run, and a burst that arrives at a
fresh server is routed as if the load were light (as vLLM profiles a forward pass at startup to size its cache).
"""

from __future__ import annotations

import time

from stitchllm.engine.runner import ModelRunner
from stitchllm.engine.step_time import StepTimeModel, StepTimes
from stitchllm.engine.work import WorkItem
from stitchllm.sampling import SamplingParams

TIMED_RUNS = 3  # per shape; the fastest counts for the fixed time (a shared machine's noise only adds)
DECODE_BATCH = 32  # the most single-token requests profiled at once where the kernels never switch


def profile_step_time(runner: ModelRunner, step_times: StepTimes, large_slots: int, max_tokens: int,
                      token_id: int) -> None:
    """Seed `step_times` with steps of the whole large model and hold each kernel regime's fixed time, the
    intercept of the line through two shapes of that regime.

    Below the kernel switch (everywhere, without one): one token, and a batch of single tokens (decode-like, as
    light load runs), as large as the regime and the slots allow. From the switch on: one prompt of
    `switch_rows` tokens and one of twice as many (a prompt's rows reach the regime on one slot). Then one prompt
    of `max_tokens` seeds the per-token fit with a prefill-heavy step. Each shape runs once untimed (one-off
    kernel set-up), then TIMED_RUNS times. The KV slots written here hold garbage that later requests overwrite
    before they read it; nothing else persists."""
    switch = step_times.switch_rows
    batch = min(large_slots, DECODE_BATCH if switch is None else switch - 1)
    fastest_one = _fastest(runner, step_times, 1, 1, token_id)
    if batch > 1:
        _hold_intercept(step_times.few, (1, fastest_one), (batch, _fastest(runner, step_times, batch, 1, token_id)))
    if step_times.many is not None and min(2 * switch, max_tokens) > switch:
        rows = (switch, min(2 * switch, max_tokens))
        _hold_intercept(step_times.many, *[(n, _fastest(runner, step_times, 1, n, token_id)) for n in rows])
    _fastest(runner, step_times, 1, max(1, max_tokens), token_id)


def _fastest(runner: ModelRunner, step_times: StepTimes, requests: int, length: int, token_id: int) -> float:
    """Run `requests` prompts of `length` tokens through the large model; each timed run is an observation for
    the regime of its rows; returns the fastest run's seconds."""
    params = SamplingParams(max_tokens=1)
    items = [WorkItem(f"profile-{i}", "routed", [token_id] * length, 0, "large", {"large": i}, params)
             for i in range(requests)]
    times = []
    for run in range(1 + TIMED_RUNS):
        started = time.monotonic()
        out = runner.run(items)
        if run:
            times.append(time.monotonic() - started)
            step_times.observe(requests * length, out.params_read, float(requests * length), times[-1])
    for it in items:
        runner.release(it.request_id)
    return min(times)


def _hold_intercept(model: StepTimeModel, low: tuple[int, float], high: tuple[int, float]) -> None:
    """Hold `model`'s fixed time at the step time its line through (rows, seconds) `low` and `high` gives for 0
    rows (an all-large step reads 1 unit of weights)."""
    per_row = max(0.0, high[1] - low[1]) / (high[0] - low[0])
    model.hold_per_read(max(0.0, low[1] - per_row * low[0]))
