"""How fast the large model's top-1 agreement falls as compute is removed from it, without any healing.

    .venv/bin/python benchmarks/block_damage.py [--text FILE] [--tokens 4096]

Two ways of making the large model cheaper, each a stand-in for what a stitched route does to its top blocks:
skipping single blocks, and pruning half the MLP channels (least important first, by the same activation
statistics `family derive` uses) of the top k blocks. If agreement fell in proportion to the compute removed,
partial routes would lie on the straight line between the small and the large model; it falls faster for the
first compute removed (convex), which is why on a family like the default one mixing the two whole models beats
every stitched route (docs/ROUTING.md).
"""

from __future__ import annotations

import argparse

import torch

from stitchllm.data.corpus import python_docs_text
from stitchllm.eval.text import read_text, token_windows
from stitchllm.family.importance import logits_skipping, measure_importance
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.loader import load_model, load_tokenizer, resolve_model_dir


@torch.no_grad()  # not inference_mode: the pruning edits weights in place, and packed weights track their version
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--text", default=None, help="evaluation text (default: the held-out corpus split)")
    ap.add_argument("--tokens", type=int, default=4096)
    args = ap.parse_args()
    model_dir = resolve_model_dir("default")
    model = load_model(model_dir)
    c = model.config
    tokenizer = load_tokenizer(model_dir, c.vocab_size)
    windows = token_windows(read_text(args.text) if args.text else python_docs_text("heldout"), tokenizer,
                            window=512, max_tokens=args.tokens)
    ids = torch.cat(windows)  # [T]
    batch = ForwardBatch(list(range(len(windows))), [0] * len(windows), [len(w) for w in windows])
    calib = torch.tensor(tokenizer(python_docs_text("train"), add_special_tokens=False)["input_ids"])[:8192]
    importance = measure_importance(model, list(calib.split(512)), "cosine")  # only the MLP scores are used

    def top1(skip: int | None = None) -> torch.Tensor:  # [T] argmax token ids
        return logits_skipping(model, skip)(ids, batch).argmax(-1)

    reference = top1()
    agree = lambda pred: float((pred == reference).float().mean())  # noqa: E731
    total = c.flops_per_token
    print(f"{len(ids)} tokens; cost = remaining matmul FLOPs / the large model's ({total / 1e6:.0f} MFLOP/token)")
    print("skip one block:")
    for i in range(c.num_layers):
        skipped = agree(top1(i))
        print(f"  block {i:2d}  cost {1 - c.block_flops_per_token / total:.3f}  top-1 {skipped:.3f}")
    print("prune 50% of the MLP channels of the top k blocks:")
    mlp_flops = 3 * 2 * c.hidden_size * c.intermediate_size  # gate, up, down
    saved = {}
    for k in (1, 2, 3, 6, 10, 15, 20, 30):
        blocks = range(c.num_layers - k, c.num_layers)
        for i in blocks:
            if i not in saved:
                saved[i] = model.blocks[i].down.weight.clone()
                drop = importance.mlp[i].argsort()[: c.intermediate_size // 2]
                model.blocks[i].down.weight[:, drop] = 0  # channel removed: its down-projection column is zero
        cost = 1 - k * mlp_flops / 2 / total
        print(f"  k {k:2d}  cost {cost:.3f}  top-1 {agree(top1()):.3f}")
    for i, weight in saved.items():
        model.blocks[i].down.weight.copy_(weight)


if __name__ == "__main__":
    main()
