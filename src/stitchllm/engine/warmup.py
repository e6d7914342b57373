"""Startup profiling: time a few steps of the large model so the load controller can plan from the first request.

Without it the step-time model knows nothing until several real steps have run, and a burst that arrives at a
fresh server is routed as if the load were light (as vLLM profiles a forward pass at startup to size its cache).
"""

from __future__ import annotations

import time

from stitchllm.engine.runner import ModelRunner
from stitchllm.engine.step_time import StepTimeModel
from stitchllm.engine.work import WorkItem
from stitchllm.sampling import SamplingParams

TIMED_RUNS = 3  # per shape; the fastest counts for the fixed time (a shared machine's noise only adds)


def profile_step_time(runner: ModelRunner, step_time: StepTimeModel, large_slots: int, max_tokens: int,
                      token_id: int) -> None:
    """Seed `step_time` with steps of the whole large model: one token, a batch of single tokens (decode-like),
    and one prompt of `max_tokens` (prefill-like). Each shape runs once untimed (one-off kernel set-up), then
    TIMED_RUNS times. The two decode shapes give the fixed time of a step directly (one sequence against a batch
    of them), which the step-time model then holds. The KV slots written here hold garbage that later requests
    overwrite before they read it; nothing else persists."""
    params = SamplingParams(max_tokens=1)
    batch = min(large_slots, 32)
    fastest = {}
    for n, length in [(1, 1), (batch, 1), (1, max(1, max_tokens))]:  # (requests, tokens each)
        items = [WorkItem(f"profile-{i}", "routed", [token_id] * length, 0, "large", {"large": i}, params)
                 for i in range(n)]
        times = []
        for run in range(1 + TIMED_RUNS):
            started = time.monotonic()
            out = runner.run(items)
            if run:
                times.append(time.monotonic() - started)
                step_time.observe(out.params_read, float(n * length), times[-1])
        fastest[n, length] = min(times)
        for it in items:
            runner.release(it.request_id)
    if batch > 1:
        one, many = fastest[1, 1], fastest[batch, 1]
        per_sequence = max(0.0, many - one) / (batch - 1)
        step_time.hold_per_read(max(0.0, one - per_sequence))  # an all-large step reads 1 unit
