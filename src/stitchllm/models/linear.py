"""Linear: nn.Linear that, for CPU inference, runs on a oneDNN pre-packed form of its weight.

Why: on the AMD EPYC CPUs this project runs on, MKL's sgemm reaches ~40-70 GFLOP/s at the 1-64 row shapes of
decoding, while oneDNN with a pre-packed (blocked) weight reaches ~100-130 GFLOP/s (measured in
benchmarks/decode_throughput.py's setting). The packed form may be bf16: on CPUs with native bf16 dot products
(AVX512-BF16, AMX) oneDNN runs those matmuls ~1.9x faster than fp32 (measured on a Zen 4 EPYC: ~400 vs ~210
GFLOP/s at 128 rows); on CPUs without them it is either much slower (emulated) or impossible (AVX2 only: see
models/cpu.py). Activations stay fp32 between linears: each call rounds its input to bf16 and returns fp32
(relative error ~4e-3 per matmul).

One copy of each weight: a model's packed form *replaces* its dense weight (`pack(release=True)`, what
DecoderModel.prepack does), so a 1.5B-parameter model holds 6 GB of matmul weights, not 12. The dense fp32
weight is rebuilt from the packed form where something needs it (`dense_weight()`: autograd through a frozen
model, pruning, saving); from an fp32 packing that is exact, from a bf16 one it is the bf16-rounded weight.
Layers that train (stitches) keep their dense weight and re-pack after edits.

The weight may instead be held quantised (int8 / int4, models/quantized.py: `hold`); then that form is the one copy,
`dense_weight()` dequantises it, and `pack` turns it back into a oneDNN packing of the dequantised weight.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from stitchllm.errors import StitchError
from stitchllm.models.cpu import cpu_features

MATMUL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def resolve_matmul_dtype(name: str) -> torch.dtype:
    """'auto' -> bf16 where the CPU has native bf16 dot products, else fp32; or 'float32' / 'bfloat16' (refused,
    in one line, on a CPU whose oneDNN cannot run bf16 matmuls)."""
    features = cpu_features()
    if name == "auto":
        return torch.bfloat16 if features.native_bf16 and _onednn_available() else torch.float32
    if name not in MATMUL_DTYPES:
        raise StitchError(f"unknown matmul dtype {name!r}: use auto, {', '.join(MATMUL_DTYPES)}")
    if name == "bfloat16" and not (features.bf16_matmul and _onednn_available()):
        raise StitchError(f"bfloat16 matmuls need a CPU with AVX512BW/VL/DQ or AVX-NE-CONVERT (this one: "
                          f"{features.capability}, oneDNN reports no bf16 support): use --matmul-dtype auto or float32")
    return MATMUL_DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' or 'bfloat16': the name `resolve_matmul_dtype` takes, as manifests and reports record it."""
    return str(dtype).removeprefix("torch.")


def _released() -> nn.Parameter:
    """The placeholder a released dense weight leaves behind (0 elements: it holds no memory)."""
    return nn.Parameter(torch.empty(0), requires_grad=False)


class Linear(nn.Linear):
    """A drop-in nn.Linear with an optional packed fast path for inference (fp32 weights, CPU)."""

    _packed: torch.Tensor | None = None
    _packed_bias: torch.Tensor | None = None
    _packed_dtype: torch.dtype = torch.float32
    _packed_version: int = -1
    _packed_from: weakref.ref | None = None  # the dense weight the packed form was made from (a plain attribute
    # would register it as a second parameter); None once that weight is released
    _quantized = None  # an Int8Weight / Int4Weight (models/quantized.py) that replaced the weight, if any

    @property
    def released(self) -> bool:
        """Whether the packed (or quantised) form is the only copy of the weight."""
        return (self._packed is not None or self._quantized is not None) and self.weight.numel() == 0

    @property
    def quantized(self):
        """The int8 / int4 form holding this weight (models/quantized.py), or None."""
        return self._quantized

    def dense_weight(self) -> torch.Tensor:
        """The weight [out, in] in fp32: the held one, or rebuilt from the packed or quantised form when that is the
        only copy."""
        if not self.released:
            return self.weight
        if self._quantized is not None:
            return self._quantized.dense()
        return self._packed.to_dense().to(torch.float32)

    def hold(self, quantized) -> None:
        """Make `quantized` (an Int8Weight / Int4Weight of this weight) the only copy: the dense weight and any
        packed form are dropped."""
        self._quantized, self._packed, self._packed_bias, self._packed_from = quantized, None, None, None
        self.weight = _released()

    def pack(self, dtype: torch.dtype = torch.float32, release: bool = False) -> None:
        """Pre-pack the weight for oneDNN, computing in `dtype` (fp32 or bf16); with `release`, the packed form
        replaces the dense weight. A no-op where packing does not apply (GPU, weights not fp32, no oneDNN) or where
        this weight, unchanged, is already packed in `dtype` (every engine built on a catalog asks again)."""
        w = self.weight
        if self._packed is not None and self._packed_dtype == dtype:
            if self.released or (self._packed_from is not None and self._packed_from() is w
                                 and self._packed_version == w._version):
                return
        if not self.released and not (w.device.type == "cpu" and w.dtype == torch.float32 and _onednn_available()):
            return
        dense = self.dense_weight().detach()
        self._packed = torch.ops.mkldnn._reorder_linear_weight(dense.to(dtype), None)
        self._packed_bias = None if self.bias is None else self.bias.detach().to(dtype)
        self._packed_dtype, self._quantized = dtype, None
        if release:
            self.weight, self._packed_from = _released(), None
        else:
            self._packed_from, self._packed_version = weakref.ref(self.weight), self.weight._version

    deltas: tuple = ()  # (rows, delta) pairs: delta(x[rows]) adds to those rows of the output (x [T, in], 2-D).
    # Set only for the duration of a batch by stitch/adapters.py `adapted`: one route's own low-rank updates of a
    # block every route shares, applied to that route's rows alone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._base_forward(x)
        for rows, delta in self.deltas:
            y[rows] += delta(x[rows]).to(y.dtype)
        return y

    def _base_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._quantized is not None and not torch.is_grad_enabled():
            return self._quantized_forward(x)
        if self._packed is not None and not torch.is_grad_enabled():
            if not self.released and self._packed_version != self.weight._version:  # edited in place since packing
                self.pack(self._packed_dtype)
            if self._packed_dtype == x.dtype:
                return torch.ops.mkldnn._linear_pointwise(x, self._packed, self._packed_bias, "none", [], "")
            y = torch.ops.mkldnn._linear_pointwise(x.to(self._packed_dtype), self._packed, self._packed_bias,
                                                   "none", [], "")
            return y.to(x.dtype)
        return F.linear(x, self.dense_weight(), self.bias)

    def _quantized_forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out] in x's dtype, through the quantised kernel (which takes 2-D inputs in its
        activation dtype and has no bias)."""
        q = self._quantized
        y = q.matmul(x.reshape(-1, x.shape[-1]).to(q.act_dtype).contiguous())  # [M, out]
        y = y.to(x.dtype).view(*x.shape[:-1], y.shape[-1])
        return y if self.bias is None else y + self.bias


def pack_linears(module: nn.Module, matmul_dtype: torch.dtype = torch.float32,
                 keep_fp32: tuple[nn.Module, ...] = (), release: bool = False, skip_quantized: bool = False) -> None:
    """(Re-)pack every Linear inside `module` to compute in `matmul_dtype`, those in `keep_fp32` in fp32; with
    `release`, each packed form replaces its dense weight (one copy in memory); with `skip_quantized`, linears
    held quantised stay so."""
    for m in module.modules():
        if isinstance(m, Linear) and not (skip_quantized and m.quantized is not None):
            m.pack(torch.float32 if any(m is k for k in keep_fp32) else matmul_dtype, release)


@contextmanager
def computing_in(module: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Within the block, every fp32-packed Linear of `module` computes in `dtype` (a second packing of its weight,
    made on entry and dropped on exit: memory holds both meanwhile); quantised and unpacked linears stay as they
    are. Why: a pass that reads many tokens once (the stitch build's teacher pass) runs 3.4x faster in bf16 on
    CPUs with native bf16 dot products, while the model keeps its exact fp32 form for everything else."""
    fields = ("_packed", "_packed_bias", "_packed_dtype", "_packed_from", "_packed_version")
    swapped = []
    if dtype != torch.float32:
        for m in module.modules():
            if isinstance(m, Linear) and m._packed is not None and m._packed_dtype == torch.float32:
                swapped.append((m, [getattr(m, f) for f in fields]))
                m.pack(dtype)  # from its dense weight, or rebuilt from the fp32 packing that is its only copy
    try:
        yield
    finally:
        for m, saved in swapped:
            for f, value in zip(fields, saved):
                setattr(m, f, value)


def training_autocast(dtype: torch.dtype) -> torch.autocast:
    """Training's counterpart of the packed bf16 path: under autograd, F.linear and the attention matmuls run in
    bf16 with fp32 weights and gradients (1.47x faster healing steps on a Zen 4 EPYC, FAMILY.md); fp32: a no-op."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
