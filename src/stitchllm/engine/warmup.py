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


def profile_step_time(runner: ModelRunner, step_time: StepTimeModel, large_slots: int, max_tokens: int,
                      token_id: int) -> None:
    """Seed `step_time` with steps of the whole large model: one token, a batch of single tokens (decode-like),
    and one prompt of `max_tokens` (prefill-like). Each shape runs twice and only the second is timed (the first
    pays one-off kernel set-up). The KV slots written here hold garbage that later requests overwrite before
    they read it; nothing else persists."""
    params = SamplingParams(max_tokens=1)
    shapes = [(1, 1), (min(large_slots, 32), 1), (1, max(1, max_tokens))]  # (requests, tokens each)
    for n, length in shapes:
        items = [WorkItem(f"profile-{i}", "routed", [token_id] * length, 0, "large", {"large": i}, params)
                 for i in range(n)]
        for timed in (False, True):
            started = time.monotonic()
            out = runner.run(items)
            if timed:
                step_time.observe(out.params_read, float(n * length), time.monotonic() - started)
        for it in items:
            runner.release(it.request_id)
