"""Weight-only quantisation: int8 or int4 weights that *replace* a Linear's fp32 weight, run by PyTorch's own CPU
kernels (`aten._weight_int8pack_mm`, `aten._weight_int4pack_mm_for_cpu`).

Why: decoding a 1.5B model reads every weight once per step (6.2 GB in fp32), so at the 1-32 row shapes of decode
the matmuls are bound by memory, not arithmetic. int8 reads 1/4 of the bytes, int4 ~1/7 (with its scales and
offsets). Activations, norms, attention and the KV cache stay as they were: only the stored weight changes.

- int8: symmetric, one scale per output row: w ~ q * scale, q in [-127, 127]; a weight is off by at most 1/254 of
  its row's largest entry. On SmolLM2-135M (int8 blocks, fp32 head, 1024 held-out tokens): perplexity +0.16%, top-1
  token = fp32's for 96.8% of positions (bf16 matmuls: +0.11%, 99.7%).
- int4: asymmetric, per group of 128/64/32 inputs: w ~ (q - 8) * scale + zero, q in [0, 15] (the kernel's own
  convention: it subtracts 8). Plain round-to-nearest, no calibration: on SmolLM2-135M perplexity +35%, top-1 73%;
  on Qwen2.5-Coder-1.5B +5.4%.
- gguf: the GGUF file's own levels (models/gguf_blocks.py): its 4-bit tensors kept level for level (groups of 32),
  its other tensors as int8 per row. They run on the integer dot-product kernel (models/int_dot.py) where it
  builds, else on these kernels. On Qwen2.5-Coder-1.5B: perplexity +0.11% against fp32 on the integer kernel,
  +0.01% on these.

Which formats run, and how fast against oneDNN fp32, is measured by benchmarks/weight_formats.py and
benchmarks/single_stream.py; `auto` follows them (`resolve_weight_format`). In int8 and int4 the LM head stays fp32
(DecoderModel.prepack says why); gguf stores it as the file does.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from stitchllm.errors import StitchError
from stitchllm.models.cpu import cpu_features
from stitchllm.models.linear import Linear

WEIGHT_FORMATS = ("fp32", "int8", "int4", "gguf")
# PyTorch's x86 kernels for both formats are vectorised for bf16 activations only: with fp32 ones they run a scalar
# loop, 10-30x slower than oneDNN fp32 (benchmarks/weight_formats.py). So activations are rounded to bf16 on the way
# in (relative error ~4e-3, as for bf16 matmuls, models/linear.py) and the result comes back to fp32.
ACT_DTYPE = torch.bfloat16
INT4_GROUP_SIZES = (128, 64, 32)  # the largest that divides in_features: the kernel runs as fast with any of them
# (benchmarks/weight_formats.py), and larger groups cost less memory (a bf16 scale and offset per group: 128 -> +12%)
INT4_ROW_TILE = 64  # the int4 packing lays out each 64 output rows on their own (AVX-512: 64, AVX2: 32)
_QUANTISE_ROWS = 4096  # quantise this many rows at a time: a vocabulary-wide head needs no second fp32 copy


def resolve_weight_format(name: str, matmul_dtype: torch.dtype = torch.float32) -> str:
    """'fp32' / 'int8' / 'int4' / 'gguf' as asked (refused in one line where this CPU's PyTorch cannot run the
    kernel), or 'auto': 'gguf' where both kernels run, else 'fp32'. `matmul_dtype` is what every linear left dense
    computes in; it does not change the choice.

    'gguf' keeps the quantisation of the GGUF file a model was converted from (models/gguf_blocks.py): its 4-bit
    tensors in int4 level for level, the rest in int8 per row, the head included, run by the integer dot-product
    kernel where it builds (models/int_dot.py); a model that did not come from a GGUF file has none to keep and
    loads in fp32 (models/loader.py). Why it is the automatic choice, measured on Qwen2.5-Coder-1.5B
    (docs/BENCHMARKS.md): held-out perplexity +0.11% against fp32 (the fp32 weights are the same file
    de-quantised), 0.89x llama.cpp's single-stream decode on the same file (fp32: 0.28x), and `serve` peaks at
    4.7 GiB against 11.6. Its cost: from 16 rows a step on, the int kernels run slower than oneDNN's fp32 and far
    slower than its bf16 (0.6x fp32's throughput at 64 requests in flight). int8 and int4 re-quantise whatever
    fp32 weights they are given by rounding (int4: +5.4% perplexity on the same model)."""
    features = cpu_features()
    if name == "auto":
        return "gguf" if features.int8_weights and features.int4_weights else "fp32"
    if name not in WEIGHT_FORMATS:
        raise StitchError(f"unknown weight format {name!r}: use auto, {', '.join(WEIGHT_FORMATS)}")
    if name in ("int8", "gguf") and not features.int8_weights:
        raise StitchError(f"{name} weights need PyTorch's CPU kernel aten._weight_int8pack_mm, which does not run "
                          f"here ({features.describe()}): use --weights fp32")
    if name in ("int4", "gguf") and not features.int4_weights:
        raise StitchError(f"{name} weights need PyTorch's CPU kernel aten._weight_int4pack_mm_for_cpu, which does "
                          f"not run here ({features.describe()}): use --weights int8 or fp32")
    return name


class Int8Weight:
    """A weight [N, K] as int8 rows with one scale per row (symmetric), for activations in `act_dtype`."""

    def __init__(self, w: torch.Tensor, act_dtype: torch.dtype = ACT_DTYPE):
        # w [N, K] fp32 -> q [N, K] int8, scales [N] in act_dtype (the kernel reads its scales in that dtype)
        self.act_dtype = act_dtype
        self.q, self.scales = torch.empty(w.shape, dtype=torch.int8), torch.empty(w.shape[0], dtype=act_dtype)
        for rows in range(0, w.shape[0], _QUANTISE_ROWS):
            chunk = w[rows:rows + _QUANTISE_ROWS].float()
            # round the scale to act_dtype *before* rounding the weights, so q absorbs the scale's rounding
            s = (chunk.abs().amax(dim=1).clamp(min=1e-12) / 127).to(act_dtype)  # a zero row would divide by 0
            q = torch.round(chunk / s.float()[:, None]).clamp(-127, 127)
            self.q[rows:rows + _QUANTISE_ROWS], self.scales[rows:rows + _QUANTISE_ROWS] = q.to(torch.int8), s

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, K] in act_dtype -> [M, N] in act_dtype."""
        return torch.ops.aten._weight_int8pack_mm(x, self.q, self.scales)

    def dense(self) -> torch.Tensor:
        """The weight [N, K] in fp32 as the kernel sees it (dequantised)."""
        return self.q.float() * self.scales.float()[:, None]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.scales))


class Int4Weight:
    """A weight [N, K] as int4 in the CPU kernel's packed layout, with a scale and an offset per group of
    `group_size` inputs of each row (asymmetric), for activations in `act_dtype`."""

    def __init__(self, w: torch.Tensor, group_size: int | None = None, act_dtype: torch.dtype = ACT_DTYPE):
        """Round `w` [N, K] (fp32) to the nearest of 16 evenly spaced levels per group (round-to-nearest)."""
        n, k = w.shape
        group_size = group_size or next((g for g in INT4_GROUP_SIZES if k % g == 0), INT4_GROUP_SIZES[-1])
        self._allocate(n, k, group_size, act_dtype)
        for rows in range(0, n, _QUANTISE_ROWS):  # a multiple of INT4_ROW_TILE: row chunks pack independently
            chunk = w[rows:rows + _QUANTISE_ROWS].float().view(-1, k // group_size, group_size)  # [R, K/G, G]
            lo, hi = chunk.amin(-1), chunk.amax(-1)  # [R, K/G]
            # the kernel dequantises (q - 8) * scale + zero: zero is the value q = 8 stands for. Both are rounded
            # to act_dtype first, and q is chosen against the rounded pair.
            scale = ((hi - lo) / 15).clamp(min=1e-12).to(act_dtype)
            zero = (lo + 8 * scale.float()).to(act_dtype)
            q = torch.round((chunk - zero.float()[..., None]) / scale.float()[..., None]) + 8
            self._pack_rows(rows, q.clamp(0, 15).view(-1, k), scale, zero)

    @classmethod
    def from_levels(cls, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                    act_dtype: torch.dtype = ACT_DTYPE) -> "Int4Weight":
        """A weight already stored as int4 levels (a GGUF 4-bit tensor, models/gguf_blocks.py): q [N, K] in
        [0, 15], scale and zero [N, K / G] with w = (q - 8) * scale + zero. Kept level for level; only scale and
        zero are rounded to act_dtype."""
        (n, k), groups = q.shape, scale.shape[1]
        self = cls.__new__(cls)
        self._allocate(n, k, k // groups, act_dtype)
        for rows in range(0, n, _QUANTISE_ROWS):
            end = rows + _QUANTISE_ROWS
            self._pack_rows(rows, q[rows:end], scale[rows:end].to(act_dtype), zero[rows:end].to(act_dtype))
        return self

    def _allocate(self, n: int, k: int, group_size: int, act_dtype: torch.dtype) -> None:
        if n % 16 or k % group_size:  # the packing's own limits
            raise StitchError(f"int4 weights need out_features divisible by 16 and in_features by {group_size} "
                              f"(this layer: {n} x {k}): use --weights int8")
        self.shape, self.group_size, self.act_dtype = (n, k), group_size, act_dtype
        # packed [N, K/2] uint8 (two weights a byte); scales_and_zeros [K/G, N, 2] in act_dtype, as the kernel reads
        self.packed = torch.empty(n, k // 2, dtype=torch.uint8)
        self.scales_and_zeros = torch.empty(k // group_size, n, 2, dtype=act_dtype)

    def _pack_rows(self, rows: int, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> None:
        """Pack levels q [R, K] for the rows from `rows` on (a multiple of INT4_ROW_TILE), scale and zero [R, K/G]."""
        end = rows + q.shape[0]
        self.packed[rows:end] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            q.to(torch.int32), 2)  # inner_k_tiles: ignored by the CPU packing
        self.scales_and_zeros[:, rows:end] = torch.stack([scale, zero], -1).transpose(0, 1)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, K] in act_dtype -> [M, N] in act_dtype."""
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, self.group_size, self.scales_and_zeros)

    def dense(self) -> torch.Tensor:
        """The weight [N, K] in fp32 as the kernel sees it (dequantised)."""
        n, k = self.shape
        q = torch.empty(n, k, dtype=torch.uint8)
        for rows in range(0, n, INT4_ROW_TILE):
            tile = self.packed[rows:rows + INT4_ROW_TILE]
            nibbles = torch.stack([tile & 15, tile >> 4], -1).view(-1)  # [R * K] in packed order
            q[rows:rows + INT4_ROW_TILE].view(-1)[_int4_layout(tile.shape[0], k)] = nibbles
        sz = self.scales_and_zeros.float().transpose(0, 1)  # [N, K/G, 2]
        grouped = q.view(n, -1, self.group_size).float() - 8  # [N, K/G, G]
        return (grouped * sz[..., :1] + sz[..., 1:]).view(n, k)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scales_and_zeros))


@lru_cache(maxsize=16)
def _int4_layout(rows: int, k: int) -> torch.Tensor:
    """Where each nibble of a packed [rows, K] tile came from: index [rows * K] into the row-major weight.

    The packing's layout depends on the vector ISA PyTorch dispatches to, so it is not written down here but read
    off the packing itself: pack the base-16 digits of every position's index, one digit at a time."""
    index = torch.arange(rows * k, dtype=torch.int64)
    where = torch.zeros(rows * k, dtype=torch.int64)
    digits = max(1, ((rows * k - 1).bit_length() + 3) // 4)
    for d in range(digits):
        digit = ((index >> (4 * d)) & 15).to(torch.int32).view(rows, k)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(digit, 2)
        where += torch.stack([packed & 15, packed >> 4], -1).view(-1).to(torch.int64) << (4 * d)
    return where


_KINDS = {"int8": Int8Weight, "int4": Int4Weight}


def quantized_kind(fmt: str):
    """Int8Weight / Int4Weight for 'int8' / 'int4', None for fp32 and gguf (which picks per tensor,
    models/loader.py); refuses, in one line, a format this CPU cannot run."""
    return _KINDS.get(resolve_weight_format(fmt))


def quantize_linears(module: nn.Module, fmt: str, keep_fp32: tuple[nn.Module, ...] = ()) -> None:
    """Replace the weight of every Linear inside `module` by its `fmt` form ('int8' / 'int4' / 'auto'; one copy in
    memory); those in `keep_fp32` are packed in fp32 instead. A linear already in `fmt` keeps its quantised weight
    (re-quantising a dequantised weight would only add error)."""
    kind = quantized_kind(fmt)
    if kind is None:
        raise StitchError(f"not a quantised weight format: {fmt!r} (int8, int4)")
    for m in module.modules():
        if not isinstance(m, Linear):
            continue
        if any(m is k for k in keep_fp32):
            m.pack(torch.float32, release=True)
        elif not isinstance(m.quantized, kind):
            m.hold(kind(m.dense_weight().detach()))
