"""Stitching experiments on a named family, any (cut, entry) pairs: least-squares start, then KL distillation read
from a teacher cache that keeps the streams at `--cache-cuts` (one large-model pass serves every experiment whose
cuts it keeps). Prints each route's validation ppl / KL / top-1 at the start and trained, its cost, and the
mixing line (the two whole models mixed at the same cost) beside it.

    python benchmarks/stitch_experiment.py --pairs 20-24,24-21 --cache-cuts 16,18,20,22,24,26,28 --steps 100
    python benchmarks/stitch_experiment.py --cache-cuts 16,18,20,22,24,26,28 --fill 400   # only the teacher pass
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn


class LoRA(nn.Module):
    """base(x) + x A^T B^T: a rank-r update of a frozen linear (B starts at zero). For measuring what tuning the
    small model's blocks per route would add; the runtime has no per-route block weights."""

    def __init__(self, base: nn.Module, rank: int):
        super().__init__()
        self._base = (base,)  # not a submodule: its frozen weight must not join the trained parameters
        self.a = nn.Parameter(torch.randn(rank, base.in_features) / base.in_features ** 0.5)
        self.b = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._base[0](x) + (x @ self.a.T) @ self.b.T


def add_lora(small, stitch, rank: int) -> None:
    """Rank-`rank` updates on every linear of the small model's blocks the stitch's route runs, trained with it
    (they become the stitch's parameters). One route per run: they change blocks every route shares."""
    adapters = nn.ModuleList()
    for block in small.blocks[stitch.entry:]:
        for name in ("qkv", "o_proj", "gate_up", "down"):
            setattr(block, name, LoRA(getattr(block, name), rank))
            adapters.append(getattr(block, name))
    stitch.lora = adapters


def main() -> None:
    from stitchllm.data.corpus import python_docs_text
    from stitchllm.eval.text import token_windows
    from stitchllm.family.family import load_family
    from stitchllm.family.registry import family_sources
    from stitchllm.routing.route import large_route, small_route, stitched_route
    from stitchllm.stitch.build import _validate
    from stitchllm.stitch.init import pair_fits
    from stitchllm.eval.mixing import with_mixing_line
    from stitchllm.stitch.layer import StitchLayer, stitch_key
    from stitchllm.stitch.teacher_cache import TeacherCache, TeacherCacheConfig, teacher_cache_root
    from stitchllm.stitch.train import StitchTrainConfig, train_stitches

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="qwen2.5-coder")
    ap.add_argument("--pairs", default="")
    ap.add_argument("--cache-cuts", default="16,18,20,22,24,26,28")
    ap.add_argument("--fill", type=int, default=0, help="only fill the training cache's first N windows")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--calibration-tokens", type=int, default=16384)
    ap.add_argument("--ridge", type=float, default=1e-3)
    ap.add_argument("--mlp", type=int, default=0, help="hidden width of the stitch's residual MLP (0: affine)")
    ap.add_argument("--precondition", action="store_true", help="train on inputs scaled to unit RMS per channel")
    ap.add_argument("--lora", type=int, default=0, help="also train rank-R updates of the small blocks (one pair)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    started = time.perf_counter()
    family = load_family(*family_sources(args.family))
    cache_cfg = TeacherCacheConfig(cuts=tuple(int(c) for c in args.cache_cuts.split(",")))
    ids = torch.tensor(family.tokenizer(python_docs_text("train"), add_special_tokens=False)["input_ids"])
    train_ids = ids[args.calibration_tokens:]
    if args.fill:
        TeacherCache(teacher_cache_root(), family.fingerprint()["large"], train_ids, 256, cache_cfg.cuts,
                     cache_cfg).fill(family.large, args.fill)
        return
    pairs = [tuple(int(x) for x in p.split("-")) for p in args.pairs.split(",")]
    configs = {"large": family.large.config, "small": family.small.config}
    base = large_route(configs).flops_per_token(configs)
    routes = [small_route(configs)] + [stitched_route(configs, k, j) for k, j in pairs] + [large_route(configs)]
    val = token_windows(python_docs_text("validation"), family.tokenizer, 512, 4096)

    # the least-squares start reads the training cache's first windows: no second teacher pass
    cache = TeacherCache(teacher_cache_root(), family.fingerprint()["large"], train_ids, 256, cache_cfg.cuts,
                         cache_cfg)
    cache.fill(family.large, args.calibration_tokens // 256)
    stitches = {}
    for (k, j), fit in pair_fits(family, pairs, cache=cache, cache_windows=args.calibration_tokens // 256).items():
        layer = StitchLayer(configs["large"].hidden_size, configs["small"].hidden_size, k, j, args.mlp)
        layer.set_affine(*fit.solve(args.ridge))
        stitches[layer.key] = layer
    start = _validate(family, stitches, routes, val)
    if args.lora:
        if len(stitches) != 1:
            raise SystemExit("--lora trains the small model's shared blocks: give one pair")
        add_lora(family.small, next(iter(stitches.values())), args.lora)
    train = StitchTrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, teacher_cache=cache_cfg,
                              precondition=args.precondition)
    train_kl = train_stitches(family, stitches, train_ids, train)
    trained = _validate(family, stitches, routes, val)

    # the mixing line from the start's whole models: with --lora, "trained" small ran tuned blocks
    costs = {r.name: r.flops_per_token(configs) / base for r in routes}
    mixing = {m["name"]: m["mix_ppl"] for m in with_mixing_line([{"name": n, "cost": c} | start[n]
                                                                 for n, c in costs.items()])}
    rows = []
    for r in routes:
        key = stitch_key(*r.stitches[0]) if r.stitches else None
        rows.append({"route": r.name, "cost": round(costs[r.name], 3), "start": start[r.name],
                     "trained": trained[r.name], "mixing_ppl": mixing[r.name], "train_kl": train_kl.get(key)})
        s, t = start[r.name], trained[r.name]
        print(f"{r.name:>8} cost {costs[r.name]:.3f}  start ppl {s['ppl']:7.2f} KL {s['kl']:.3f} "
              f"top1 {s['top1_agree']:.3f}  -> ppl {t['ppl']:6.2f} KL {t['kl']:.3f} top1 {t['top1_agree']:.3f}  "
              f"mixing ppl {mixing[r.name]:.2f}", flush=True)
    out = {"args": vars(args), "rows": rows, "seconds": round(time.perf_counter() - started)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
