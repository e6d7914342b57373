"""Activation statistics that decide what to prune: block influence, hidden channels, head groups, MLP channels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from stitchllm.eval.perplexity import packed_windows
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.decoder import DecoderModel


@dataclass
class Importance:
    """Per-part importance scores of one model, measured on calibration text (higher = keep)."""

    block: torch.Tensor  # [L] 1 - cos(block input, block output): how much a block changes the residual stream
    hidden: torch.Tensor  # [L, D] mean |RMSNorm output| per channel, per block (attention and MLP norms summed)
    head: torch.Tensor  # [L, H] mean L2 norm of each query head's attention output
    mlp: torch.Tensor  # [L, I] mean |silu(gate) * up| per intermediate channel


@torch.no_grad()
def measure_importance(model: DecoderModel, windows: list[torch.Tensor]) -> Importance:
    """One pass over calibration windows with forward hooks on the runtime's own modules (no re-implementation)."""
    c = model.config
    L, tokens = c.num_layers, 0
    block = torch.zeros(L, dtype=torch.float64)
    hidden = torch.zeros(L, c.hidden_size, dtype=torch.float64)
    head = torch.zeros(L, c.num_heads, dtype=torch.float64)
    mlp = torch.zeros(L, c.intermediate_size, dtype=torch.float64)
    hooks = []
    for i, b in enumerate(model.blocks):
        def on_block(_m, args, out, i=i):  # args[0]: block input [T, D]
            block[i] += (1 - F.cosine_similarity(args[0], out, dim=-1)).sum().double()

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
    return Importance(block / tokens, hidden / tokens, head / tokens, mlp / tokens)
