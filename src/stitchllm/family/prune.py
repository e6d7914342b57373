"""Structured pruning: drop whole blocks, hidden channels, head groups and MLP channels by measured importance."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stitchllm.errors import StitchError
from stitchllm.family.importance import Importance
from stitchllm.models.config import ModelConfig
from stitchllm.models.decoder import DecoderModel


@dataclass(frozen=True, slots=True)
class PruneTarget:
    """Sizes of the pruned model; head_dim is kept from the parent, so only whole heads are removed."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int

    def check_against(self, parent: ModelConfig) -> None:
        """Refuse requests that cannot be a pruned version of the parent, naming the offending size."""
        p = parent
        for name, value, limit in [("layers", self.layers, p.num_layers), ("hidden", self.hidden, p.hidden_size),
                                   ("heads", self.heads, p.num_heads), ("kv-heads", self.kv_heads, p.num_kv_heads),
                                   ("intermediate", self.intermediate, p.intermediate_size)]:
            if not 1 <= value <= limit:
                raise StitchError(f"--{name} {value} is not in [1, {limit}] (the parent has {limit})")
        if self.hidden % self.heads:
            raise StitchError(f"--hidden {self.hidden} is not divisible by --heads {self.heads}")
        if self.heads % self.kv_heads:
            raise StitchError(f"--heads {self.heads} is not a multiple of --kv-heads {self.kv_heads}")
        if self.heads // self.kv_heads > p.num_heads // p.num_kv_heads:
            raise StitchError(f"--heads/--kv-heads = {self.heads // self.kv_heads} query heads per key head; "
                              f"the parent has only {p.num_heads // p.num_kv_heads}")

    def child_config(self, parent: ModelConfig) -> ModelConfig:
        return ModelConfig(**(parent.to_dict() | dict(
            num_layers=self.layers, hidden_size=self.hidden, num_heads=self.heads, num_kv_heads=self.kv_heads,
            intermediate_size=self.intermediate)))


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in their original order (so the kept parts keep their sequence)."""
    return scores.topk(k).indices.sort().values


def choose_heads(head_scores: torch.Tensor, parent: ModelConfig, target: PruneTarget) -> tuple[torch.Tensor, torch.Tensor]:
    """For one block: (kept kv heads [K], kept query heads [A]); query heads stay with their key group."""
    group = parent.num_heads // parent.num_kv_heads
    per_group = head_scores.view(parent.num_kv_heads, group)  # [kv, G]
    kv_keep = _top(per_group.sum(-1), target.kv_heads)
    q_per_group = target.heads // target.kv_heads
    q_keep = [g * group + _top(per_group[g], q_per_group) for g in kv_keep.tolist()]
    return kv_keep, torch.cat(q_keep)


def _head_rows(heads: torch.Tensor, head_dim: int, offset: int = 0) -> torch.Tensor:
    """Row indices of whole heads in a stacked projection."""
    return (offset + heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


@torch.no_grad()
def prune(parent: DecoderModel, importance: Importance, target: PruneTarget) -> tuple[DecoderModel, dict]:
    """A new model of the target sizes whose weights are slices of the parent's; returns it and what was kept."""
    target.check_against(parent.config)
    p, child_config = parent.config, target.child_config(parent.config)
    kept_blocks = _top(importance.block, target.layers)
    ch = _top(importance.hidden[kept_blocks].sum(0), target.hidden)  # hidden channels kept everywhere
    child = DecoderModel(child_config, parent.max_positions)
    child.embed_tokens.weight.copy_(parent.embed_tokens.weight[:, ch])
    child.final_norm.weight.copy_(parent.final_norm.weight[ch])
    if not child_config.tie_word_embeddings:
        child.lm_head.weight.copy_(parent.lm_head.dense_weight()[:, ch])
    for new_i, old_i in enumerate(kept_blocks.tolist()):
        src, dst = parent.blocks[old_i], child.blocks[new_i]
        kv_keep, q_keep = choose_heads(importance.head[old_i], p, target)
        qkv_rows = torch.cat([_head_rows(q_keep, p.head_dim), _head_rows(kv_keep, p.head_dim, p.q_size),
                              _head_rows(kv_keep, p.head_dim, p.q_size + p.kv_size)])
        mlp = _top(importance.mlp[old_i], target.intermediate)
        dst.attn_norm.weight.copy_(src.attn_norm.weight[ch])
        dst.qkv.weight.copy_(src.qkv.dense_weight()[qkv_rows][:, ch])
        if p.qkv_bias:
            dst.qkv.bias.copy_(src.qkv.bias[qkv_rows])
        dst.o_proj.weight.copy_(src.o_proj.dense_weight()[ch][:, _head_rows(q_keep, p.head_dim)])
        dst.mlp_norm.weight.copy_(src.mlp_norm.weight[ch])
        gate_up_rows = torch.cat([mlp, p.intermediate_size + mlp])
        dst.gate_up.weight.copy_(src.gate_up.dense_weight()[gate_up_rows][:, ch])
        dst.down.weight.copy_(src.down.dense_weight()[ch][:, mlp])
    kept = {"blocks": kept_blocks.tolist(), "hidden_channels": len(ch)}
    return child.eval(), kept
