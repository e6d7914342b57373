"""Engine throughput for one policy at saturation (closed loop), without the quality labelling of `stitchllm bench`.

    .venv/bin/python benchmarks/engine_saturation.py [--policy fixed:large] [--concurrency 32]
        [--prompt-tokens 64] [--output-tokens 128] [--duration 30] [--matmul-dtype float32]
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from stitchllm.bench.driver import run_closed_loop
from stitchllm.bench.workload import make_requests
from stitchllm.data.corpus import python_docs_text
from stitchllm.engine.build import engine_from_catalog
from stitchllm.engine.config import EngineConfig
from stitchllm.routing.catalog import load_catalog
from stitchllm.stitch.build import stitches_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", default="fixed:large")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--matmul-dtype", default="float32", choices=["auto", "float32", "bfloat16"])
    args = ap.parse_args()
    catalog = load_catalog()
    tokenizer = catalog.family.tokenizer
    ids = torch.tensor(tokenizer(python_docs_text("heldout"), add_special_tokens=False)["input_ids"])
    requests = make_requests(ids, 64, args.prompt_tokens, args.output_tokens)
    config = EngineConfig(max_model_len=args.prompt_tokens + args.output_tokens + 8, max_num_seqs=args.concurrency,
                          max_num_batched_tokens=512, policy=args.policy, matmul_dtype=args.matmul_dtype)
    engine = engine_from_catalog(catalog, stitches_dir(catalog.family) if catalog.stitches else None, config)
    run_closed_loop(engine, requests, args.concurrency, 2, args.output_tokens)  # warm-up
    records, wall = run_closed_loop(engine, requests, args.concurrency, args.duration, args.output_tokens)
    tokens = sum(len(r.token_times) for r in records)
    mix = Counter(r.route for r in records)
    print(f"{args.policy} ({args.matmul_dtype} matmuls): {len(records)} requests, {tokens / wall:.1f} output tok/s over {wall:.1f} s; routes "
          + ", ".join(f"{name} {n / len(records):.0%}" for name, n in mix.most_common()))


if __name__ == "__main__":
    main()
