"""IntDotWeight: a GGUF model's weights as 4- or 8-bit levels, multiplied with integer dot products
(kernels/int_dot.cpp, torch.ops.stitchllm_int_dot.int_dot_mm), the activations rounded to int8 per group of 32.

Why: PyTorch's own weight-only kernels (models/quantized.py) turn every weight back into floats before
multiplying. On 2 cores that, not memory, bounded a decode step of Qwen2.5-Coder-1.5B at 0.74x llama.cpp's speed
on the same GGUF file (docs/BENCHMARKS.md). llama.cpp multiplies 4-bit levels with int8 activations in integer dot
products instead, and so does this kernel. The levels are the GGUF file's own (models/gguf_blocks.py), so only
the activations' rounding is new: a relative error of ~5e-3 per matmul, like the bf16 activations that PyTorch's
kernels take.

A weight [N, K] is w = (level - offset) * scale + zero:
- 4 bits: levels 0..15, offset 8, as a GGUF 4-bit tensor stores them (Q4_K, Q4_0, Q4_1), with a bf16 scale and
  zero per output and group of 32 inputs;
- 8 bits: levels -127..127 with one fp32 scale per output: an Int8Weight.
Outputs are interleaved in blocks of 8 so that one vector instruction serves 8 outputs (kernels/int_dot.cpp).

Batches of 16 rows or more run on AMX tiles where the CPU and the OS have them (kernels/int_dot_amx.cpp): the same
weights de-quantised into bf16 tiles in cache, 2-3.2x the vector kernel's speed at 32-512 rows; their bf16
rounding of weights and activations is a relative error of ~2.4e-3 a matmul (the vector kernel's int8 activations:
~5e-3). `gguf` weights use the kernel wherever it builds with vector dot products (AVX2 or better);
STITCHLLM_INT_DOT=0 keeps PyTorch's kernels instead, STITCHLLM_INT_DOT_AMX=0 the vector kernel for batches (to
compare).
"""

from __future__ import annotations

import functools
import os

import torch

from stitchllm.errors import StitchError
from stitchllm.models.cpu_kernels import build_kernel

GROUP = 32
BLOCK = 8  # outputs interleaved in one vector of the kernel
AMX_MIN_ROWS = 16  # a matmul of this many rows or more goes to AMX tiles (kernels/int_dot.cpp, kAmxMinRows)
DISABLE_ENV = "STITCHLLM_INT_DOT"
AMX_ENV = "STITCHLLM_INT_DOT_AMX"


@functools.cache
def int_dot_available() -> bool:
    """Whether the kernel is built here with vector dot products (AVX2 or better). Its scalar fallback is kept for
    correctness only and was never measured for speed, so without them `gguf` stays on PyTorch's kernels."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return False
    if not build_kernel("stitchllm_int_dot", ["int_dot.cpp", "int_dot_amx.cpp"], "integer dot-product",
                        "using PyTorch's int4/int8 kernels"):
        return False
    return torch.ops.stitchllm_int_dot.int_dot_isa() != "scalar"


@functools.cache
def amx_allowed() -> bool:
    """Whether batches may go to AMX tiles (STITCHLLM_INT_DOT_AMX=0: not, to compare); the kernel itself checks that
    the CPU and the OS have them (torch.ops.stitchllm_int_dot.int_dot_amx())."""
    return os.environ.get(AMX_ENV, "1") != "0"


def tile_rows() -> int | None:
    """From how many rows a step's matmuls run on AMX tiles here, None where they never do. A step's cost changes
    there (engine/step_time.py StepTimes): the tiles de-quantise every weight each step, whatever the rows."""
    if int_dot_available() and amx_allowed() and torch.ops.stitchllm_int_dot.int_dot_amx():
        return AMX_MIN_ROWS
    return None


def describe() -> str:
    """How `gguf` weights multiply on this machine, for the serve banner."""
    if not int_dot_available():
        return "PyTorch's int4/int8 kernels"
    tiles = tile_rows() is not None
    return f"integer kernel, {torch.ops.stitchllm_int_dot.int_dot_isa()}{', batches on AMX tiles' if tiles else ''}"


class IntDotWeight:
    """A weight [N, K] as levels [ceil(N / 8), K * bits] uint8 in the kernel's interleaved layout (8 outputs a
    block, see kernels/int_dot.cpp), with bf16 scales and zeros [ceil(N / 8), K / 32, 8] (4 bits) or fp32 scales
    per output [ceil(N / 8) * 8] (8 bits)."""

    act_dtype = torch.float32  # the kernel rounds activations itself: it takes and returns fp32

    def __init__(self, levels: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, n: int, k: int):
        self.levels, self.scales, self.zeros, self.bits = levels, scales, zeros, bits
        self.shape = (n, k)

    @classmethod
    def from_int4_levels(cls, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> "IntDotWeight":
        """q [N, K] in 0..15, scale and zero [N, K / 32] (w = (q - 8) * scale + zero): kept level for level, scale
        and zero rounded to bf16."""
        n, k = q.shape
        if scale.shape != (n, k // GROUP) or k % GROUP:
            raise StitchError(f"int-dot weights need groups of {GROUP} inputs (this one: {n} x {k} in "
                              f"{scale.shape[-1]} groups)")
        steps = _interleave(q.to(torch.uint8), 8)  # [N/8, K/32, 8 steps, 32]
        packed = steps[:, :, :4] | (steps[:, :, 4:] << 4)  # step p low, step p + 4 high: [N/8, K/32, 4, 32]
        return cls(packed.flatten(1).contiguous(), _interleave_groups(scale.bfloat16()),
                   _interleave_groups(zero.bfloat16()), 4, n, k)

    @classmethod
    def from_int8(cls, q: torch.Tensor, row_scales: torch.Tensor) -> "IntDotWeight":
        """An int8 weight q [N, K] (levels -127..127) with one scale per row [N] (models/quantized.Int8Weight)."""
        n, k = q.shape
        if k % GROUP:
            raise StitchError(f"int-dot weights need groups of {GROUP} inputs (this one: {n} x {k})")
        stored = (q.to(torch.int16) + 128).to(torch.uint8)  # unsigned, for the dot-product instructions
        scales = torch.zeros(_blocks(n) * BLOCK)
        scales[:n] = row_scales.float()
        return cls(_interleave(stored, 0x80).flatten(1).contiguous(), scales, torch.empty(0), 8, n, k)

    def matmul(self, x: torch.Tensor, amx: bool | None = None) -> torch.Tensor:
        """x [M, K] fp32 -> [M, N] fp32; batches on AMX tiles where there are some unless `amx` is False (by
        default: unless STITCHLLM_INT_DOT_AMX=0)."""
        amx = amx_allowed() if amx is None else amx
        n = self.shape[0]
        return torch.ops.stitchllm_int_dot.int_dot_mm(x, self.levels, self.scales, self.zeros, self.bits, n, amx)

    def dense(self) -> torch.Tensor:
        """The weight [N, K] in fp32 as the kernel holds it."""
        n, k = self.shape
        blocks, groups = _blocks(n), k // GROUP
        if self.bits == 4:
            packed = self.levels.view(blocks, groups, 4, 32)
            steps = torch.cat([packed & 15, packed >> 4], 2).float() - 8  # [N/8, K/32, 8 steps, 32]
            scales, zeros = (t.float().view(blocks, groups, BLOCK) for t in (self.scales, self.zeros))
        else:
            steps = self.levels.view(blocks, groups, 8, 32).float() - 128
            scales, zeros = torch.ones(blocks, groups, BLOCK), torch.zeros(blocks, groups, BLOCK)
        # step s, byte 4j + t: output j, input 4s + t of the group
        values = steps.view(blocks, groups, 8, BLOCK, 4).permute(0, 3, 1, 2, 4).reshape(blocks, BLOCK, groups, GROUP)
        w = values * scales.transpose(1, 2)[..., None] + zeros.transpose(1, 2)[..., None]  # [N/8, 8, K/32, 32]
        w = w.reshape(blocks * BLOCK, k)[:n]
        return w * self.scales[:n, None] if self.bits == 8 else w

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.levels, self.scales, self.zeros))


def _blocks(n: int) -> int:
    return -(-n // BLOCK)


def _interleave(levels: torch.Tensor, pad: int) -> torch.Tensor:
    """levels [N, K] uint8 -> [N/8, K/32, 8, 32]: for each block of 8 outputs and group of 32 inputs, step s holds
    inputs 4s..4s+3 of every output (byte 4j + t: output j, input t). Missing outputs are padded with `pad`."""
    n, k = levels.shape
    padded = torch.full((_blocks(n) * BLOCK, k), pad, dtype=torch.uint8)
    padded[:n] = levels
    steps = padded.view(-1, BLOCK, k // GROUP, 8, 4)  # [N/8, output j, group, step s, input t]
    return steps.permute(0, 2, 3, 1, 4).reshape(-1, k // GROUP, 8, BLOCK * 4)


def _interleave_groups(per_group: torch.Tensor) -> torch.Tensor:
    """[N, K/32] per output and group -> [N/8, K/32, 8]: a group's values for a block's 8 outputs side by side."""
    n, groups = per_group.shape
    padded = torch.zeros(_blocks(n) * BLOCK, groups, dtype=per_group.dtype)
    padded[:n] = per_group
    return padded.view(-1, BLOCK, groups).transpose(1, 2).contiguous()
