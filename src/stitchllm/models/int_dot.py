"""IntDotWeight: a GGUF model's weights as 4- or 8-bit levels, multiplied with integer dot products
(kernels/int_dot.cpp, torch.ops.stitchllm_int_dot.int_dot_mm), the activations rounded to int8 per group of 32.

Why: PyTorch's own weight-only kernels (models/quantized.py) turn every weight back into floats before
multiplying. On 2 cores that, not memory, bounded a decode step of Qwen2.5-Coder-1.5B at 0.74x llama.cpp's speed
on the same GGUF file (docs/BENCHMARKS.md). llama.cpp multiplies 4-bit levels with int8 activations in integer dot
products instead, and so does this kernel. The levels are the GGUF file's own (models/gguf_blocks.py), so only
the activations' rounding is new: a relative error of ~5e-3 per matmul, like the bf16 activations that PyTorch's
kernels take.

A weight [N, K] is w = (level - offset) * scale + zero, with a bf16 scale and zero per row and group of 32 inputs:
- 4 bits: levels 0..15, offset 8, as a GGUF 4-bit tensor stores them (Q4_K, Q4_0, Q4_1);
- 8 bits: levels -127..127, offset 0, zero 0: an Int8Weight (one scale per row) with its scale in every group.

`gguf` weights use it wherever it builds with vector dot products (AVX2 or better); STITCHLLM_INT_DOT=0 keeps
PyTorch's kernels instead (to compare the two).
"""

from __future__ import annotations

import functools
import os

import torch

from stitchllm.errors import StitchError
from stitchllm.models.cpu_kernels import build_kernel

GROUP = 32
DISABLE_ENV = "STITCHLLM_INT_DOT"


@functools.cache
def int_dot_available() -> bool:
    """Whether the kernel is built here with vector dot products (AVX2 or better). Its scalar fallback is kept for
    correctness only and was never measured for speed, so without them `gguf` stays on PyTorch's kernels."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return False
    if not build_kernel("stitchllm_int_dot", "int_dot.cpp", "integer dot-product", "using PyTorch's int4/int8 kernels"):
        return False
    return torch.ops.stitchllm_int_dot.int_dot_isa() != "scalar"


class IntDotWeight:
    """A weight [N, K] as levels [N, K * bits / 8] uint8 and bf16 scales and zeros [N, K / 32] (see the module)."""

    act_dtype = torch.float32  # the kernel rounds activations itself: it takes and returns fp32

    def __init__(self, levels: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, k: int):
        self.levels, self.scales, self.zeros, self.bits = levels, scales, zeros, bits
        self.shape = (levels.shape[0], k)

    @classmethod
    def from_int4_levels(cls, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> "IntDotWeight":
        """q [N, K] in 0..15, scale and zero [N, K / 32] (w = (q - 8) * scale + zero): kept level for level, scale
        and zero rounded to bf16. Each group's 32 levels go into 16 bytes: byte j holds level j (low nibble) and
        level j + 16 (high nibble), the order the kernel unpacks them in."""
        n, k = q.shape
        if scale.shape != (n, k // GROUP) or k % GROUP:
            raise StitchError(f"int-dot weights need groups of {GROUP} inputs (this one: {n} x {k} in "
                              f"{scale.shape[-1]} groups)")
        groups = q.to(torch.uint8).view(n, k // GROUP, 2, GROUP // 2)  # [N, K/32, halves, 16]
        packed = (groups[:, :, 0] | (groups[:, :, 1] << 4)).reshape(n, k // 2)
        return cls(packed.contiguous(), scale.bfloat16().contiguous(), zero.bfloat16().contiguous(), 4, k)

    @classmethod
    def from_int8(cls, q: torch.Tensor, row_scales: torch.Tensor) -> "IntDotWeight":
        """An int8 weight q [N, K] with one scale per row [N] (models/quantized.Int8Weight)."""
        n, k = q.shape
        scales = row_scales.bfloat16()[:, None].expand(n, k // GROUP).contiguous()
        return cls(q.view(torch.uint8).contiguous(), scales, torch.zeros_like(scales), 8, k)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, K] fp32 -> [M, N] fp32."""
        return torch.ops.stitchllm_int_dot.int_dot_mm(x, self.levels, self.scales, self.zeros, self.bits)

    def dense(self) -> torch.Tensor:
        """The weight [N, K] in fp32 as the kernel holds it."""
        n, k = self.shape
        if self.bits == 4:
            packed = self.levels.view(n, k // GROUP, GROUP // 2)  # [N, K/32, 16]
            values = torch.cat([packed & 15, packed >> 4], -1).float() - 8  # [N, K/32, 32]: levels 0..15, 16..31
        else:
            values = self.levels.view(torch.int8).float().view(n, k // GROUP, GROUP)
        return (values * self.scales.float()[..., None] + self.zeros.float()[..., None]).view(n, k)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.levels, self.scales, self.zeros))
