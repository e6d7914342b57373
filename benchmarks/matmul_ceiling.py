"""The engine's upper bound on this machine: the large model's matmuls alone, as one decode step would run them.

    .venv/bin/python benchmarks/matmul_ceiling.py [--batches 32,64,128] [--repeats 5]

Every block's packed linears (qkv, o_proj, gate_up, down) and the LM head on a [B, d] batch, nothing else: no
attention, norms, RoPE, sampling or scheduling. Decode tokens/s = B / step time is what a perfect engine would
reach with B sequences in flight; a real step also spends time in attention and the rest.
"""

from __future__ import annotations

import argparse
import time

import torch

from stitchllm.models.loader import load_model, resolve_model_dir


@torch.inference_mode()
def matmul_step(model, batch: int) -> None:
    x = torch.randn(batch, model.config.hidden_size)
    attended, inner = torch.randn(batch, model.config.q_size), torch.randn(batch, model.config.intermediate_size)
    for block in model.blocks:
        block.qkv(x), block.o_proj(attended), block.gate_up(x), block.down(inner)
    model.head(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="32,64,128")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    model = load_model(resolve_model_dir("default")).prepack()
    flops = model.config.block_flops_per_token * model.config.num_layers + model.config.head_flops_per_token
    print(f"threads {torch.get_num_threads()}, {flops / 1e6:.0f} MFLOP per decoded token")
    for batch in (int(b) for b in args.batches.split(",")):
        matmul_step(model, batch)  # warm-up
        start = time.perf_counter()
        for _ in range(args.repeats):
            matmul_step(model, batch)
        step = (time.perf_counter() - start) / args.repeats
        print(f"batch {batch:>4}: {step * 1e3:6.1f} ms/step  {batch / step:6.0f} decode tok/s  "
              f"{batch * flops / step / 1e9:5.0f} GFLOP/s")


if __name__ == "__main__":
    main()
