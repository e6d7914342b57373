"""How fast each stored weight format multiplies at Qwen2.5-Coder-1.5B's linear shapes on this CPU.

    .venv/bin/python benchmarks/weight_formats.py [--rows 1,8,32,128] [--head-rows 1,32] [--seconds 0.2]
        [--rounds 3] [--threads T] [--json out]

Per shape (N x K) and row count M: GFLOP/s and the effective GB/s of weight bytes read (the weight's stored size /
time) for oneDNN packed fp32 and bf16 (models/linear.py), the GGUF levels' integer dot-product kernel
(models/int_dot.py: 4-bit levels, groups of 32; "amx": batches of 16 rows or more on AMX tiles, where the CPU has
them), int8 per-row weights and int4 per-group weights (groups of 32/64/128) with bf16 activations
(models/quantized.py), and both with fp32 activations ("f32x", one row only: a scalar loop). Random weights:
speed does not depend on the values. Each cell runs for --seconds in --rounds interleaved with the other formats
(best round kept); the vocabulary-wide head only at --head-rows. Compare columns within one run: on a shared
machine absolute numbers drift, ratios much less.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from stitchllm.models.cpu import cpu_features
from stitchllm.models.int_dot import IntDotWeight, int_dot_available
from stitchllm.models.quantized import Int4Weight, Int8Weight

SHAPES = {"qkv": (2048, 1536), "o_proj": (1536, 1536), "gate_up": (17920, 1536), "down": (1536, 8960),
          "head": (151936, 1536)}


def cpu_flags() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
    return " ".join(sorted({f for f in re.findall(r"\w+", text) if f in wanted})) or "unknown"


def formats(w: torch.Tensor):
    """(name, bytes of weight read, most rows worth timing, make() -> matmul(x [M, K] fp32) -> [M, N]) for each
    format this CPU runs. The quantised kernels with fp32 activations run a scalar loop (~1-3 GFLOP/s): timed at
    one row only, to show it."""
    features = cpu_features()

    def onednn(dtype):
        packed = torch.ops.mkldnn._reorder_linear_weight(w.to(dtype), None)
        return lambda x: torch.ops.mkldnn._linear_pointwise(x.to(dtype), packed, None, "none", [], "")

    def quantised(q):
        return lambda x: q.matmul(x.to(q.act_dtype))

    n, k, fp32, every = *w.shape, torch.float32, 1 << 30
    yield "fp32", n * k * 4, every, lambda: onednn(fp32)
    if features.bf16_matmul:
        yield "bf16", n * k * 2, every, lambda: onednn(torch.bfloat16)
    if features.int8_weights:
        yield "int8 f32x", n * k + n * 4, 1, lambda: quantised(Int8Weight(w, fp32))
        yield "int8", n * k + n * 2, every, lambda: quantised(Int8Weight(w))
    if int_dot_available():  # the GGUF levels' kernel: random levels, groups of 32, fp32 activations
        def int_dot(amx):
            levels = torch.randint(0, 16, (n, k))
            weight = IntDotWeight.from_int4_levels(levels, torch.rand(n, k // 32) * 1e-3, torch.zeros(n, k // 32))
            return lambda x: weight.matmul(x, amx=amx)

        yield "q4 int-dot", n * k // 2 + n * k // 32 * 4, every, lambda: int_dot(False)
        if torch.ops.stitchllm_int_dot.int_dot_amx():
            yield "q4 int-dot amx", n * k // 2 + n * k // 32 * 4, every, lambda: int_dot(True)
    if features.int4_weights:
        yield "int4 g128 f32x", n * k // 2 + n * k // 128 * 8, 1, lambda: quantised(Int4Weight(w, 128, fp32))
        for g in (32, 64, 128):
            yield f"int4 g{g}", n * k // 2 + n * k // g * 4, every, lambda g=g: quantised(Int4Weight(w, g))


def seconds_per_call(fn, x: torch.Tensor, budget: float) -> float:
    fn(x)  # warm-up: first-call allocations and caches
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < budget:
        fn(x)
        calls += 1
    return (time.perf_counter() - start) / calls


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1,8,32,128")
    ap.add_argument("--head-rows", default="1,32")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--seconds", type=float, default=0.2, help="per cell, split over --rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="default: PyTorch's own choice")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:  # on a machine something else keeps busy, fewer threads than cores avoid idle-waiting
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"cpu flags: {cpu_flags()}; PyTorch {torch.__version__}: {cpu_features().describe()}; "
          f"{torch.get_num_threads()} threads")
    results, names = [], []
    for shape in args.shapes.split(","):
        n, k = SHAPES[shape]
        rows = [int(m) for m in (args.head_rows if shape == "head" else args.rows).split(",")]
        w = torch.randn(n, k) * 0.02
        xs = {m: torch.randn(m, k) for m in rows}
        built = [(name, nbytes, max_rows, make()) for name, nbytes, max_rows, make in formats(w)]
        names += [name for name, *_ in built if name not in names]
        for m in rows:
            cells = [(name, nbytes, fn) for name, nbytes, max_rows, fn in built if m <= max_rows]
            best = {name: float("inf") for name, _, _ in cells}
            for _ in range(args.rounds):  # interleaved rounds, best of each: drift on a shared machine hits all alike
                for name, _, fn in cells:
                    best[name] = min(best[name], seconds_per_call(fn, xs[m], args.seconds / args.rounds))
            for name, nbytes, _ in cells:
                t = best[name]
                results.append(dict(shape=shape, n=n, k=k, m=m, format=name, ms=t * 1e3,
                                    gflops=2 * m * n * k / t / 1e9, gbs=nbytes / t / 1e9))
        del built, w

    print("GFLOP/s / effective GB/s of weights read (higher is better)")
    print("| shape (N x K) | M | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for shape in args.shapes.split(","):
        for m in sorted({r["m"] for r in results if r["shape"] == shape}):
            cells = {r["format"]: r for r in results if r["shape"] == shape and r["m"] == m}
            row = [f"{cells[f]['gflops']:.0f} / {cells[f]['gbs']:.1f}" if f in cells else "-" for f in names]
            print(f"| {shape} {SHAPES[shape][0]}x{SHAPES[shape][1]} | {m} | " + " | ".join(row) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(cpu_flags=cpu_flags(), features=cpu_features().describe(),
                                                   threads=torch.get_num_threads(), results=results), indent=1))


if __name__ == "__main__":
    main()
