"""Saturation of one route per weight format against llama.cpp batching on the same GGUF, in one run.

    python benchmarks/saturation_formats.py --family qwen2.5-coder [--route large] [--formats fp32,bf16,gguf]
        [--concurrency 64] [--duration 60] [--json F]

Each format loads the family afresh and keeps the engine (policy `fixed:ROUTE`, continuous batching) at
`concurrency` requests in flight for `duration` seconds: `stitchllm bench`'s closed loop, 64-token prompts of the
held-out text, 64 new tokens each, EOS ignored. `fp32` is the fp32 path (fp32 weights and matmuls), `bf16` the same
weights packed for bf16 matmuls (`--matmul-dtype bfloat16`, where the CPU has it), `gguf` / `int8` / `int4` the
weight formats with fp32 matmuls for what stays dense (`gguf-aten`: `gguf` on PyTorch's int4/int8 kernels instead
of the integer dot-product kernel, models/int_dot.py; `gguf-vector`: that kernel without AMX tiles for batches).
Then, for `large` or `small`, llama.cpp (the `peers` extra) on that model's Q4_K_M GGUF with as many threads as
PyTorch uses: `concurrency` sequences decoded together through its batched API, as a static batch.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time


def engine_run(large: str, small: str, route: str, fmt: str, requests, concurrency: int, duration: float,
               tokens: int) -> dict:
    from stitchllm.bench.driver import run_closed_loop
    from stitchllm.engine.build import engine_from_catalog
    from stitchllm.engine.config import EngineConfig
    from stitchllm.models import int_dot
    from stitchllm.routing.catalog import load_catalog

    int_dot.int_dot_available.cache_clear()
    int_dot.amx_allowed.cache_clear()
    os.environ[int_dot.DISABLE_ENV] = "0" if fmt == "gguf-aten" else "1"
    os.environ[int_dot.AMX_ENV] = "0" if fmt == "gguf-vector" else "1"
    weights, matmul = ("fp32", "bfloat16") if fmt == "bf16" else (fmt.split("-")[0], "float32")
    start = time.perf_counter()
    catalog = load_catalog(large, small, weights=weights)
    load_s = time.perf_counter() - start
    config = EngineConfig(max_model_len=len(requests[0].prompt) + tokens + 8, max_num_seqs=concurrency,
                          max_num_batched_tokens=512, policy=f"fixed:{route}", matmul_dtype=matmul, weights=weights)
    records, wall = run_closed_loop(engine_from_catalog(catalog, None, config), requests, concurrency, duration,
                                    tokens)
    done = sum(r.num_tokens for r in records)
    del catalog
    gc.collect()
    return {"system": f"stitchllm {fmt} {route}", "throughput_tok_s": done / wall, "requests": len(records),
            "wall_s": round(wall, 2), "load_s": round(load_s, 1)}


def main() -> None:
    import torch

    from stitchllm.bench.peers import llama_cpp_batched
    from stitchllm.bench.workload import make_requests
    from stitchllm.data.corpus import python_docs_text
    from stitchllm.family.registry import family_sources, model_gguf
    from stitchllm.models.loader import load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="qwen2.5-coder")
    ap.add_argument("--formats", default="fp32,bf16,gguf")
    ap.add_argument("--route", default="large", help="large, small or a stitched route (llama.cpp: the first two)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    large, small = family_sources(args.family)
    ids = torch.tensor(load_tokenizer(large)(python_docs_text("heldout"), add_special_tokens=False)["input_ids"])
    requests = make_requests(ids, 256, args.prompt_tokens, args.output_tokens)
    threads = torch.get_num_threads()
    rows = []
    systems = [lambda fmt=fmt: engine_run(large, small, args.route, fmt, requests, args.concurrency, args.duration,
                                          args.output_tokens) for fmt in args.formats.split(",")]
    gguf = model_gguf({"large": large, "small": small}[args.route]) if args.route in ("large", "small") else None
    if gguf is not None:
        systems.append(lambda: llama_cpp_batched(gguf, requests, args.output_tokens, args.concurrency, threads))
    for run in systems:  # each printed (and saved) as it ends
        row = run()
        if row is None:
            continue
        row.pop("outputs", None)  # llama.cpp's tokens: for its test, not the report
        rows.append(row)
        print(f"{row['system']:>70}  {row['throughput_tok_s']:.1f} tok/s", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "threads": threads, "gguf": str(gguf), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
