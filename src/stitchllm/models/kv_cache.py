"""KVCache: fixed buffers the runtime owns; which slot belongs to which request is decided outside (plain Python)."""

from __future__ import annotations

import torch

from stitchllm.models.config import ModelConfig


class KVCache:
    """Keys and values of `num_slots` sequences of up to `max_len` tokens, for a contiguous range of a model's blocks.

    Layout per layer: [num_slots, num_kv_heads, max_len, head_dim], so one sequence's keys are a zero-copy view
    that attention reads directly. A route that uses only blocks [first, end) of a model allocates only those.
    """

    def __init__(
        self,
        config: ModelConfig,
        num_slots: int,
        max_len: int,
        first_block: int = 0,
        end_block: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        self.first_block = first_block
        self.end_block = config.num_layers if end_block is None else end_block
        self.num_slots = num_slots
        self.max_len = max_len
        shape = (self.end_block - first_block, num_slots, config.num_kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def layer(self, block_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, v) buffers of one block, each [num_slots, kv_heads, max_len, head_dim]."""
        if not self.first_block <= block_index < self.end_block:
            raise IndexError(f"block {block_index} has no cache here ([{self.first_block}, {self.end_block}))")
        i = block_index - self.first_block
        return self.k[i], self.v[i]

    @staticmethod
    def bytes_per_token(config: ModelConfig, num_blocks: int, dtype: torch.dtype = torch.float32) -> int:
        return 2 * num_blocks * config.num_kv_heads * config.head_dim * torch.finfo(dtype).bits // 8
