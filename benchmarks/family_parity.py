"""Perplexity parity with transformers: each member of a family scored by transformers on exactly the windows
`stitchllm eval` scores (same tokenizer call, same 512-token windows, no BOS), against the runtime's figures.

    stitchllm eval --family qwen2.5-coder --text heldout.txt --routes large,small --max-tokens 4096 --json > ours.json
    python benchmarks/family_parity.py --family qwen2.5-coder --text heldout.txt --max-tokens 4096 --ours ours.json

Models load one at a time (fp32 transformers models of this family are 7 GB and 2.5 GB).
"""

from __future__ import annotations

import argparse
import gc
import json
import math

import torch
import torch.nn.functional as F


@torch.inference_mode()
def transformers_ppl(model_dir: str, windows: list[torch.Tensor]) -> float:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    nll, tokens = 0.0, 0
    for w in windows:
        logits = hf(w[None]).logits[0, :-1]  # [n-1, V]: one window at a time
        nll += float(F.cross_entropy(logits.float(), w[1:], reduction="sum"))
        tokens += len(w) - 1
    del hf
    gc.collect()
    return math.exp(nll / tokens)


def main() -> None:
    from stitchllm.eval.text import read_text, token_windows
    from stitchllm.family.registry import family_sources
    from stitchllm.models.loader import load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="qwen2.5-coder")
    ap.add_argument("--text", required=True)
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--ours", required=True, help="`stitchllm eval --routes large,small --json` output")
    args = ap.parse_args()
    ours = {r["name"]: r for r in json.loads(open(args.ours).read())["routes"]}
    report = {"family": args.family, "max_tokens": args.max_tokens, "window": args.window, "members": []}
    for name, model_dir in zip(("large", "small"), family_sources(args.family)):
        windows = token_windows(read_text(args.text), load_tokenizer(model_dir), args.window, args.max_tokens)
        ppl = transformers_ppl(model_dir, windows)
        row = {"member": name, "transformers_ppl": ppl, "stitchllm_ppl": ours[name]["ppl"],
               "tokens": sum(len(w) - 1 for w in windows), "relative_difference": ours[name]["ppl"] / ppl - 1}
        report["members"].append(row)
        print(f"{name}: transformers {ppl:.4f}  stitchllm {row['stitchllm_ppl']:.4f}  "
              f"({100 * row['relative_difference']:+.4f}%, {row['tokens']} tokens)", flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
