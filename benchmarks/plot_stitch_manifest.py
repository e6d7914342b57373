"""Plot a stitch build's validation figures against cost, kept and screened-out routes, with the mixing line.

    python benchmarks/plot_stitch_manifest.py --family qwen2.5-coder --manifest DIR/manifest.json --out F.png

DIR is the directory `stitch build` printed; costs come from the family's configs (no weights are loaded).
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    from transformers import AutoConfig

    from stitchllm.eval.plots import plot_route_frontier
    from stitchllm.family.registry import family_sources
    from stitchllm.models.config import ModelConfig
    from stitchllm.routing.route import large_route, small_route, stitched_route

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="qwen2.5-coder")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    manifest = json.loads(open(args.manifest).read())
    configs = {name: ModelConfig.from_hf(AutoConfig.from_pretrained(src))
               for name, src in zip(("large", "small"), family_sources(args.family))}
    base = large_route(configs).flops_per_token(configs)

    def cost(name: str) -> float:
        if name in ("large", "small"):
            route = large_route(configs) if name == "large" else small_route(configs)
        else:
            k, j = name.removeprefix("L").split("-S")
            route = stitched_route(configs, int(k), int(j))
        return route.flops_per_token(configs) / base

    kept = [{"name": n, "cost": cost(n)} | m for n, m in manifest["validation"]["trained"].items()]
    dropped = [{"name": n, "cost": cost(n)} | m["trained"] for n, m in manifest["screened_out"].items()]
    plot_route_frontier(sorted(kept, key=lambda r: r["cost"]), args.out,
                        f"{args.family}: validation ({manifest['recipe']['validation_tokens']} tokens)", dropped)
    print(json.dumps({"kept": kept, "screened_out": dropped}))


if __name__ == "__main__":
    main()
