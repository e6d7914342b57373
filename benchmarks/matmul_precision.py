"""What bf16 matmuls cost in quality: every route of the default family scored with fp32 and with bf16 linears.

    .venv/bin/python benchmarks/matmul_precision.py [--max-tokens 8192] [--window 512]

Same held-out windows, teacher-forced. Per route: perplexity with fp32 and with bf16 linears, and how often the
bf16 route's top-1 token is the fp32 route's, and the fp32 large model's. (Speed: benchmarks/engine_saturation.py
--matmul-dtype.)
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from stitchllm.data.corpus import python_docs_text
from stitchllm.eval.perplexity import packed_windows
from stitchllm.eval.text import token_windows
from stitchllm.models.batch import ForwardBatch
from stitchllm.routing.catalog import load_catalog


@torch.inference_mode()
def score(catalog, windows: list[torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per route: (NLL [N], top-1 token [N]) over every prediction inside the windows, in the catalog's current
    matmul precision."""
    executor, cuts = catalog.executor, {cut for r in catalog.routes for cut, _ in r.stitches}
    out: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {r.name: [] for r in catalog.routes}
    for group in packed_windows(windows):
        lengths, ids = [len(w) for w in group], torch.cat(group)
        batch = ForwardBatch(list(range(len(group))), [0] * len(group), lengths)
        states = executor.large_pass(ids, batch, cuts)
        targets = torch.cat([w[1:] for w in group])
        for route in catalog.routes:
            logits = executor.logits(route, executor.finish(route, states, ids, batch))
            logits = torch.cat([lg[:-1] for lg in logits.split(lengths)])  # [N, V]: predictions inside windows
            out[route.name].append((F.cross_entropy(logits, targets, reduction="none"), logits.argmax(-1)))
    return {name: (torch.cat([n for n, _ in parts]), torch.cat([t for _, t in parts])) for name, parts in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--window", type=int, default=512)
    args = ap.parse_args()
    catalog = load_catalog()
    windows = token_windows(python_docs_text("heldout"), catalog.family.tokenizer, args.window, args.max_tokens)
    catalog.set_matmul_dtype(torch.float32)
    fp32 = score(catalog, windows)
    catalog.set_matmul_dtype(torch.bfloat16)
    bf16 = score(catalog, windows)
    large_top1 = fp32["large"][1]
    print(f"{len(large_top1)} predictions; top-1 agreement of each bf16 route with the same route in fp32 and with "
          "the fp32 large model")
    print("| route | cost | ppl fp32 | ppl bf16 | change | top-1 = fp32 route | top-1 = fp32 large (fp32 route) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for route in catalog.routes:
        (nll32, top32), (nll16, top16) = fp32[route.name], bf16[route.name]
        p32, p16 = math.exp(nll32.mean()), math.exp(nll16.mean())
        print(f"| {route.name} | {catalog.relative_cost(route):.3f} | {p32:.3f} | {p16:.3f} | {p16 / p32 - 1:+.2%} | "
              f"{(top16 == top32).float().mean():.4f} | {(top16 == large_top1).float().mean():.4f} "
              f"({(top32 == large_top1).float().mean():.4f}) |")


if __name__ == "__main__":
    main()
