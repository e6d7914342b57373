"""What a decode step costs when it mixes routes: step time of n_small requests on `small` plus n_large on `large`.

    .venv/bin/python benchmarks/mixed_step.py [--steps 20] [--mixes 0:64,32:32] [--prompt-tokens 64] [--weights gguf]
    # ~2 min on 2 cores, the default family

Each model present in a step streams all its weights once, whatever its batch; at a few requests that, not
FLOPs, sets its time. So a handful of `large` requests in a mostly-`small` batch cost almost as much as many.
At tens of rows on the gguf weights' AMX tiles the rows set it instead (docs/BENCHMARKS.md: per row 9.8 ms on
`large`, 3.9 on `small`, session 31), and rows moved to `small` shorten the step.
"""

from __future__ import annotations

import argparse
import time

from stitchllm.engine.build import engine_from_catalog
from stitchllm.engine.config import EngineConfig
from stitchllm.family.registry import DEFAULT_FAMILY, family_sources
from stitchllm.models.quantized import resolve_weight_format
from stitchllm.routing.catalog import RouteCatalog, load_catalog
from stitchllm.sampling import SamplingParams

# (small, large) requests decoding; the first three: a step's fixed time per model (the load plan's weights model)
MIXES = [(1, 0), (0, 1), (1, 1), (48, 0), (0, 4), (48, 4), (0, 12), (36, 12), (48, 12), (0, 48)]


def step_ms(catalog: RouteCatalog, weights: str, n_small: int, n_large: int, steps: int, prompt_tokens: int) -> float:
    config = EngineConfig(max_model_len=prompt_tokens + 200, max_num_seqs=128, policy="fixed:large", weights=weights)
    engine = engine_from_catalog(catalog, None, config)  # a fresh engine (its own KV caches) per mix
    params = SamplingParams(max_tokens=200, ignore_eos=True)
    prompt = list(range(100, 100 + prompt_tokens))
    for i in range(n_small):
        engine.add_request(f"s{i}", prompt, params, route="small")
    for i in range(n_large):
        engine.add_request(f"l{i}", prompt, params, route="large")
    sched = engine.scheduler
    while sched.waiting or any(not r.output_ids for r in sched.running):  # prefill, then every request decodes
        engine.step()
    started = time.perf_counter()
    for _ in range(steps):
        engine.step()
    return (time.perf_counter() - started) / steps * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--mixes", help="small:large request counts, comma-separated (default: a spread of both)")
    ap.add_argument("--prompt-tokens", type=int, default=64, help="context each request decodes after")
    ap.add_argument("--weights", default="auto", help="block weights: auto (gguf where it runs), fp32, int8, int4")
    args = ap.parse_args()
    weights = resolve_weight_format(args.weights)
    catalog = load_catalog(*family_sources(DEFAULT_FAMILY), weights=weights)
    print(f"weights {weights}")
    mixes = [tuple(int(n) for n in m.split(":")) for m in args.mixes.split(",")] if args.mixes else MIXES
    print("| small | large | ms per decode step |\n|---:|---:|---:|")
    for n_small, n_large in mixes:
        ms = step_ms(catalog, weights, n_small, n_large, args.steps, args.prompt_tokens)
        print(f"| {n_small} | {n_large} | {ms:.1f} |", flush=True)


if __name__ == "__main__":
    main()
