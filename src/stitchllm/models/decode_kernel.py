"""The CPU decode-attention kernel (kernels/decode_attention.cpp): built once for this machine, or None.

Loaded as torch.ops.stitchllm.decode_attention (models/cpu_kernels.py builds it). Where it cannot be built
attention falls back to PyTorch's SDPA. STITCHLLM_DECODE_KERNEL=0 turns it off (to compare the two paths).
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import torch

from stitchllm.models.cpu_kernels import build_kernel

MAX_GROUP = 8  # query heads per key head the kernel is compiled for; more go to SDPA


@functools.cache
def decode_attention_kernel() -> Callable[..., torch.Tensor] | None:
    """torch.ops.stitchllm.decode_attention(q, k_cache, v_cache, slots, lengths, scale), or None if unavailable."""
    if os.environ.get("STITCHLLM_DECODE_KERNEL", "1") == "0":
        return None
    if not build_kernel("stitchllm_decode_attention", ["decode_attention.cpp"], "decode-attention",
                        "using PyTorch SDPA"):
        return None
    return torch.ops.stitchllm.decode_attention
