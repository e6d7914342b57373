"""Rotary position embeddings: frequency tables (incl. Llama-3 scaling, via transformers) and their application."""

from __future__ import annotations

import torch

from stitchllm.errors import StitchError
from stitchllm.models.config import ModelConfig

# Rope types whose frequencies do not depend on the sequence length, so one table serves every request.
STATIC_ROPE_TYPES = {"default", "linear", "llama3", "yarn"}


def inverse_frequencies(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """Return (inv_freq [head_dim/2], attention_scaling) exactly as transformers computes them."""
    rope_type = config.rope_parameters.get("rope_type", "default")
    if rope_type not in STATIC_ROPE_TYPES:
        raise StitchError(f"unsupported rope_type {rope_type!r}; supported: {', '.join(sorted(STATIC_ROPE_TYPES))}")
    if rope_type == "default":
        theta = float(config.rope_parameters["rope_theta"])
        exponents = torch.arange(0, config.head_dim, 2, dtype=torch.float32) / config.head_dim
        return 1.0 / (theta**exponents), 1.0
    # The scaled variants are intricate; reuse transformers' own implementation rather than re-deriving it.
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = LlamaConfig(
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        rope_parameters=dict(config.rope_parameters),
    )
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf, torch.device("cpu"))
    return inv_freq.float(), float(scaling)


class RotaryTable(torch.nn.Module):
    """Precomputed cos/sin for every position up to max_positions; looked up by absolute position."""

    def __init__(self, config: ModelConfig, max_positions: int):
        super().__init__()
        self.config, self.max_positions = config, max_positions
        self.reset()

    def reset(self) -> None:
        """(Re)compute the tables, e.g. after the model was built on the meta device."""
        with torch.device("cpu"):  # real numbers even when the model is being built on the meta device
            inv_freq, scaling = inverse_frequencies(self.config)
            positions = torch.arange(self.max_positions, dtype=torch.float32)
            freqs = torch.outer(positions, inv_freq)  # [P, hd/2]
            emb = torch.cat((freqs, freqs), dim=-1)  # [P, hd]: the rotate-half layout of HF Llama
            sin = emb.sin() * scaling
            half = sin.shape[-1] // 2
            # rotate_half(x) = [-x2, x1]; folding its sign into sin makes rotation cat + mul + addcmul
            sin[:, :half] = -sin[:, :half]
        self.register_buffer("cos", emb.cos() * scaling, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def lookup(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T] -> cos, sin [T, 1, hd] (broadcast over heads)."""
        if positions.numel() and int(positions.max()) >= self.cos.shape[0]:
            raise StitchError(f"position {int(positions.max())} is beyond the context length {self.cos.shape[0]}")
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, hd] rotated by cos and sign-folded sin [T, 1, hd] (see RotaryTable.reset)."""
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    return torch.addcmul(x * cos, swapped, signed_sin)
