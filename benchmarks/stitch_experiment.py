"""Stitching experiments on a named family, any (cut, entry) pairs: least-squares start, then KL distillation read
from a teacher cache that keeps the streams at `--cache-cuts` (one large-model pass serves every experiment whose
cuts it keeps). Prints each route's validation ppl / KL / top-1 at the start and trained, its cost, and the
mixing line (the two whole models mixed at the same cost) beside it.

    python benchmarks/stitch_experiment.py --pairs 20-24,24-21 --cache-cuts 16,18,20,22,24,26,28 --steps 100
    python benchmarks/stitch_experiment.py --cache-cuts 16,18,20,22,24,26,28 --fill 400   # only the teacher pass

`--text mix` trains on the train split's docstrings and its source code, window by window in turn (code alone once
the docstrings run out); `--teacher-dtype auto` runs the teacher pass in bf16 where the CPU has native bf16;
`--eval-at 150,300` also measures the routes after those steps (one run, one schedule: the cosine decay still
spans --steps). Validation is the docstring split as in the build, and the code split beside it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    from stitchllm.data.corpus import python_code_text, python_docs_text
    from stitchllm.eval.text import interleave_windows, token_windows
    from stitchllm.family.family import load_family
    from stitchllm.family.registry import family_sources
    from stitchllm.routing.route import large_route, small_route, stitched_route
    from stitchllm.stitch.build import _validate
    from stitchllm.stitch.init import pair_fits
    from stitchllm.eval.mixing import with_mixing_line
    from stitchllm.stitch.adapters import BlockAdapters
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
    ap.add_argument("--lora", type=int, default=0, help="rank of each route's own updates of its small blocks")
    ap.add_argument("--text", choices=("docs", "mix"), default="docs")
    ap.add_argument("--teacher-dtype", default="float32", help="float32, bfloat16 or auto")
    ap.add_argument("--eval-at", default="", help="also measure after these steps, e.g. 150,300")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    started = time.perf_counter()
    family = load_family(*family_sources(args.family))
    cache_cfg = TeacherCacheConfig(cuts=tuple(int(c) for c in args.cache_cuts.split(",")),
                                   matmul_dtype=args.teacher_dtype)

    def tokens(text: str) -> torch.Tensor:
        return torch.tensor(family.tokenizer(text, add_special_tokens=False)["input_ids"])

    train_ids = tokens(python_docs_text("train"))[args.calibration_tokens:]
    if args.text == "mix":
        train_ids = interleave_windows(train_ids, tokens(python_code_text("train")), 256)
    if args.fill:
        TeacherCache(teacher_cache_root(), family.fingerprint()["large"], train_ids, 256, cache_cfg.cuts,
                     cache_cfg).fill(family.large, args.fill)
        return
    pairs = [tuple(int(x) for x in p.split("-")) for p in args.pairs.split(",")]
    configs = {"large": family.large.config, "small": family.small.config}
    base = large_route(configs).flops_per_token(configs)
    routes = [small_route(configs)] + [stitched_route(configs, k, j) for k, j in pairs] + [large_route(configs)]
    val = token_windows(python_docs_text("validation"), family.tokenizer, 512, 4096)
    val_code = token_windows(python_code_text("validation"), family.tokenizer, 512, 4096)

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
    start_code = _validate(family, stitches, routes, val_code)
    for layer in stitches.values():  # B starts at zero: the start is unchanged
        layer.adapters = BlockAdapters(family.small, layer.entry, args.lora) if args.lora else None
    train = StitchTrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, teacher_cache=cache_cfg,
                              precondition=args.precondition)
    along = {}

    def measure(step: int) -> None:
        if step in eval_at:
            along[step] = {"docs": _validate(family, stitches, routes, val),
                           "code": _validate(family, stitches, routes, val_code)}
            print(f"step {step}: " + "  ".join(f"{n} ppl {m['ppl']:.2f} KL {m['kl']:.3f}"
                                              for n, m in along[step]["docs"].items()), flush=True)

    eval_at = {int(s) for s in args.eval_at.split(",") if s}
    train_kl = train_stitches(family, stitches, train_ids, train, after_step=measure)
    trained = _validate(family, stitches, routes, val)
    trained_code = _validate(family, stitches, routes, val_code)

    # the mixing line from the start's whole models
    costs = {r.name: r.flops_per_token(configs) / base for r in routes}
    mixing = {m["name"]: m["mix_ppl"] for m in with_mixing_line([{"name": n, "cost": c} | start[n]
                                                                 for n, c in costs.items()])}
    mixing_code = {m["name"]: m["mix_ppl"] for m in with_mixing_line([{"name": n, "cost": c} | start_code[n]
                                                                      for n, c in costs.items()])}
    rows = []
    for r in routes:
        key = stitch_key(*r.stitches[0]) if r.stitches else None
        rows.append({"route": r.name, "cost": round(costs[r.name], 3), "start": start[r.name],
                     "trained": trained[r.name], "mixing_ppl": mixing[r.name], "train_kl": train_kl.get(key),
                     "code": {"start": start_code[r.name], "trained": trained_code[r.name],
                              "mixing_ppl": mixing_code[r.name]},
                     "along": {step: {split: m[r.name] for split, m in v.items()} for step, v in along.items()}})
        s, t = start[r.name], trained[r.name]
        print(f"{r.name:>8} cost {costs[r.name]:.3f}  start ppl {s['ppl']:7.2f} KL {s['kl']:.3f} "
              f"top1 {s['top1_agree']:.3f}  -> ppl {t['ppl']:6.2f} KL {t['kl']:.3f} top1 {t['top1_agree']:.3f}  "
              f"mixing ppl {mixing[r.name]:.2f}  | code: start {start_code[r.name]['ppl']:.3f} -> "
              f"{trained_code[r.name]['ppl']:.3f} mixing {mixing_code[r.name]:.3f}", flush=True)
    out = {"args": vars(args), "rows": rows, "seconds": round(time.perf_counter() - started)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
