"""Activation statistics that decide what to prune: block influence, hidden channels, head groups, MLP channels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from stitchllm.errors import StitchError
from stitchllm.eval.perplexity import FullLogitsFn, packed_windows, perplexity
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.decoder import DecoderModel


@dataclass
class Importance:
    """Per-part importance scores of one model, measured on calibration text (higher = keep)."""

    block: torch.Tensor  # [L] rise in mean next-token NLL when the block alone is skipped (or 1 - cos, below)
    hidden: torch.Tensor  # [L, D] mean |RMSNorm output| per channel, per block (attention and MLP norms summed)
    head: torch.Tensor  # [L, H] mean L2 norm of each query head's attention output
    mlp: torch.Tensor  # [L, I] mean |silu(gate) * up| per intermediate channel


def logits_skipping(model: DecoderModel, skip: int | None) -> FullLogitsFn:
    """The model's full-sequence logits with block `skip` left out (its input goes straight to the next block)."""
    def full_logits(ids: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:  # ids [T] -> logits [T, V]
        hidden = model.embed(ids)
        for i, block in enumerate(model.blocks):
            hidden = hidden if i == skip else block(hidden, batch, None)
        return model.head(model.norm(hidden))
    return full_logits


def block_skip_damage(model: DecoderModel, windows: list[torch.Tensor]) -> torch.Tensor:
    """[L]: how much the mean next-token NLL on `windows` rises when each block alone is skipped (Shortened
    LLaMA's perplexity criterion). Why not how much a block turns the residual stream (1 - cos, ShortGPT's
    criterion, used until session 16): a block can turn the stream a lot and still be one the model does without.
    On SmolLM2 the cosine pick of 15 blocks had validation ppl 22,064 before healing, 85.1 after 24 healing steps
    and 31.5 after 128; this one's 654, 54.1 and 28.8 (FAMILY.md)."""
    base = perplexity(logits_skipping(model, None), windows)
    rises = []
    for i in tqdm(range(model.config.num_layers), desc="block skip damage", unit="block"):
        skipped = perplexity(logits_skipping(model, i), windows)
        rises.append(skipped.nll / skipped.tokens - base.nll / base.tokens)
    return torch.tensor(rises, dtype=torch.float64)


BLOCK_CRITERIA = ("skip-nll", "cosine")


def check_block_criterion(name: str) -> None:
    if name not in BLOCK_CRITERIA:
        raise StitchError(f"unknown block importance {name!r}; choose one of {', '.join(BLOCK_CRITERIA)}")


@torch.no_grad()
def measure_importance(model: DecoderModel, windows: list[torch.Tensor], block_criterion: str = "skip-nll",
                       skip_tokens: int = 2048) -> Importance:
    """Blocks by `block_criterion`: "skip-nll" (`block_skip_damage` on the windows holding the first
    `skip_tokens` tokens, one pass per block) or "cosine" (1 - cos(block input, block output), ShortGPT's); the
    finer parts from one pass over all windows with forward hooks on the runtime's own modules."""
    check_block_criterion(block_criterion)
    c = model.config
    L, tokens = c.num_layers, 0
    turn = torch.zeros(L, dtype=torch.float64)  # the cosine criterion: cheap, so always measured in the pass
    hidden = torch.zeros(L, c.hidden_size, dtype=torch.float64)
    head = torch.zeros(L, c.num_heads, dtype=torch.float64)
    mlp = torch.zeros(L, c.intermediate_size, dtype=torch.float64)
    hooks = []
    for i, b in enumerate(model.blocks):
        def on_block(_m, args, out, i=i):  # args[0]: block input [T, D]
            turn[i] += (1 - F.cosine_similarity(args[0], out, dim=-1)).sum().double()

        def on_norm(_m, _args, out, i=i):  # out [T, D]
            hidden[i] += out.abs().sum(0).double()

        def on_o_proj(_m, args, _out, i=i):  # args[0]: per-head attention outputs [T, H*hd]
            head[i] += args[0].view(-1, c.num_heads, c.head_dim).norm(dim=-1).sum(0).double()

        def on_down(_m, args, _out, i=i):  # args[0]: silu(gate) * up [T, I]
            mlp[i] += args[0].abs().sum(0).double()

        hooks += [b.register_forward_hook(on_block), b.attn_norm.register_forward_hook(on_norm),
                  b.mlp_norm.register_forward_hook(on_norm), b.o_proj.register_forward_hook(on_o_proj),
                  b.down.register_forward_hook(on_down)]
    try:
        for group in tqdm(list(packed_windows(windows)), desc="importance", unit="pass"):
            lengths = [len(w) for w in group]
            batch = ForwardBatch(list(range(len(group))), [0] * len(group), lengths)
            model.run_blocks(model.embed(torch.cat(group)), batch, None)
            tokens += sum(lengths)
    finally:
        for h in hooks:
            h.remove()
    if block_criterion == "cosine":
        return Importance(turn / tokens, hidden / tokens, head / tokens, mlp / tokens)
    ends = torch.tensor([len(w) for w in windows]).cumsum(0)
    first = windows[: int((ends < skip_tokens).sum()) + 1]  # the windows that hold the first skip_tokens tokens
    return Importance(block_skip_damage(model, first), hidden / tokens, head / tokens, mlp / tokens)
