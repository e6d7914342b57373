"""What a decode step costs when it mixes routes: step time of n_small requests on `small` plus n_large on `large`.

    .venv/bin/python benchmarks/mixed_step.py [--steps 20]      # ~2 min on 2 cores, the default family

Each model present in a step streams all its weights once, whatever its batch; at a few requests that, not
FLOPs, sets its time. So a handful of `large` requests in a mostly-`small` batch cost almost as much as many.
"""

from __future__ import annotations

import argparse
import time

from stitchllm.engine.build import build_engine
from stitchllm.engine.config import EngineConfig
from stitchllm.sampling import SamplingParams

# (small, large) requests decoding; the first three: a step's fixed time per model (the load plan's weights model)
MIXES = [(1, 0), (0, 1), (1, 1), (48, 0), (0, 4), (48, 4), (0, 12), (36, 12), (48, 12), (0, 48)]


def step_ms(n_small: int, n_large: int, steps: int) -> float:
    engine = build_engine(EngineConfig(max_model_len=256, max_num_seqs=128, policy="fixed:large"))
    params = SamplingParams(max_tokens=200, ignore_eos=True)
    prompt = list(range(100, 164))  # 64 tokens
    for i in range(n_small):
        engine.add_request(f"s{i}", prompt, params, route="small")
    for i in range(n_large):
        engine.add_request(f"l{i}", prompt, params, route="large")
    for _ in range(5):  # prefill, then every request is decoding
        engine.step()
    started = time.perf_counter()
    for _ in range(steps):
        engine.step()
    return (time.perf_counter() - started) / steps * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    print("| small | large | ms per decode step |\n|---:|---:|---:|")
    for n_small, n_large in MIXES:
        print(f"| {n_small} | {n_large} | {step_ms(n_small, n_large, args.steps):.1f} |", flush=True)


if __name__ == "__main__":
    main()
