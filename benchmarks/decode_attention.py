"""Decode attention alone: the CPU kernel against PyTorch's SDPA path, at the default model's head shapes.

    .venv/bin/python benchmarks/decode_attention.py [--batch 128] [--min-len 65] [--max-len 192] [--repeats 50]

B sequences with context lengths drawn uniformly from [min-len, max-len], keys and values in a cache of B slots
(one layer). Times one call of each path (what every block runs once per decode step) and checks they agree.
"""

from __future__ import annotations

import argparse
import time

import torch

from stitchllm.models import attention
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.decode_kernel import decode_attention_kernel


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--min-len", type=int, default=65)
    ap.add_argument("--max-len", type=int, default=192)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    kernel = decode_attention_kernel()
    if kernel is None:
        raise SystemExit("the decode-attention kernel is not available here (see the line above)")
    gen = torch.Generator().manual_seed(0)
    B, D = args.batch, args.head_dim
    k_cache = torch.randn(B, args.kv_heads, args.max_len, D, generator=gen)
    v_cache = torch.randn(B, args.kv_heads, args.max_len, D, generator=gen)
    q = torch.randn(B, args.heads, D, generator=gen)
    lengths = torch.randint(args.min_len, args.max_len + 1, (B,), generator=gen)
    batch = ForwardBatch(list(range(B)), (lengths - 1).tolist(), [1] * B)
    slots, lens = batch.decode_rows()

    def sdpa():
        return attention._sdpa_decode_attention(q, k_cache, v_cache, batch.decode_layout())

    def fused():
        return kernel(q, k_cache, v_cache, slots, lens, D**-0.5)

    err = float((sdpa() - fused()).abs().max())
    print(f"threads {torch.get_num_threads()}, {B} sequences, contexts {args.min_len}-{args.max_len}, "
          f"heads {args.heads}/{args.kv_heads} x {D}; max |kernel - sdpa| {err:.1e}")
    sdpa_ms, kernel_ms = timed(sdpa, args.repeats), timed(fused, args.repeats)
    print(f"sdpa {sdpa_ms:.3f} ms  kernel {kernel_ms:.3f} ms  ({sdpa_ms / kernel_ms:.2f}x)")


if __name__ == "__main__":
    main()
