"""One stitching experiment on a named family: least-squares start, then KL distillation read from the teacher
cache (stitch/teacher_cache.py: the large model runs once per window, not once per step), on more tokens than
`stitch build`'s default trains on. Prints every candidate route's validation quality, start and trained (routes
the build screens out as no better than a cheaper one included).

    python benchmarks/stitch_cached_kl.py --family qwen2.5-coder --cuts 16,20 --steps 100 --batch 2 --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    from stitchllm.family.family import load_family
    from stitchllm.family.registry import family_sources
    from stitchllm.stitch.build import StitchBuildConfig, build_stitches
    from stitchllm.stitch.teacher_cache import TeacherCacheConfig
    from stitchllm.stitch.train import StitchTrainConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="qwen2.5-coder")
    ap.add_argument("--cuts", default="16,20")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    started = time.perf_counter()
    family = load_family(*family_sources(args.family))
    train = StitchTrainConfig(steps=args.steps, batch=args.batch, seq_len=args.seq_len, lr=args.lr,
                              teacher_cache=TeacherCacheConfig(top_k=args.top_k))
    cfg = StitchBuildConfig(cuts=tuple(int(c) for c in args.cuts.split(",")), train=train)
    manifest = build_stitches(family, cfg, Path(args.out))
    rows = {"kept": manifest["validation"], "screened_out": manifest["screened_out"],
            "train_tokens": args.steps * args.batch * args.seq_len, "seconds": round(time.perf_counter() - started)}
    for name, m in manifest["screened_out"].items():
        print(f"{name:>10} (screened out)  start ppl {m['init']['ppl']:.2f} KL {m['init']['kl']:.3f} -> trained "
              f"ppl {m['trained']['ppl']:.2f} KL {m['trained']['kl']:.3f}")
    for name, m in manifest["validation"]["trained"].items():
        start = manifest["validation"]["init"][name]
        print(f"{name:>10}  start ppl {start['ppl']:.2f} KL {start['kl']:.3f} -> trained ppl {m['ppl']:.2f} "
              f"KL {m['kl']:.3f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
