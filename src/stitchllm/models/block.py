"""DecoderBlock: one pre-norm Llama-family block (RMSNorm, RoPE GQA attention, SwiGLU MLP), callable on its own."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stitchllm.models.attention import attention
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.config import ModelConfig
from stitchllm.models.linear import Linear
from stitchllm.models.rope import RotaryTable, apply_rotary


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale (no bias, no mean subtraction)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class DecoderBlock(nn.Module):
    """Attention and MLP with residuals; q/k/v and gate/up are fused into single matmuls for speed."""

    def __init__(self, config: ModelConfig, rotary: RotaryTable):
        super().__init__()
        d, self.config = config.hidden_size, config
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        self.qkv = Linear(d, config.q_size + 2 * config.kv_size, bias=config.qkv_bias)
        self.o_proj = Linear(config.q_size, d, bias=False)
        self.mlp_norm = RMSNorm(d, config.rms_norm_eps)
        self.gate_up = Linear(d, 2 * config.intermediate_size, bias=False)
        self.down = Linear(config.intermediate_size, d, bias=False)
        self.rotary = rotary  # shared by all blocks of the model

    def forward(
        self,
        hidden: torch.Tensor,
        batch: ForwardBatch,
        kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """hidden [T, D] of the packed new tokens -> [T, D]; writes this block's keys/values into kv_cache."""
        c = self.config
        T = hidden.shape[0]
        qkv = self.qkv(self.attn_norm(hidden))  # [T, q + 2kv]
        qk, v = qkv.split([c.q_size + c.kv_size, c.kv_size], dim=-1)
        cos, sin = batch.rope(self.rotary)  # [T, 1, hd]
        # q and k heads rotate together in one call: [T, H + kv, hd]
        qk = apply_rotary(qk.view(T, c.num_heads + c.num_kv_heads, c.head_dim), cos, sin)
        q, k = qk.split([c.num_heads, c.num_kv_heads], dim=1)  # [T, H, hd], [T, kv, hd]
        v = v.view(T, c.num_kv_heads, c.head_dim)
        attn = attention(q, k, v, batch, kv_cache)  # [T, H, hd]
        hidden = hidden + self.o_proj(attn.reshape(T, c.q_size))
        gate, up = self.gate_up(self.mlp_norm(hidden)).chunk(2, dim=-1)  # [T, I] each
        return hidden + self.down(F.silu(gate) * up)
