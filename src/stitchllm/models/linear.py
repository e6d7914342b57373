"""Linear: nn.Linear that, for CPU inference, runs on a oneDNN pre-packed copy of its weight.

Why: on the AMD EPYC CPUs this project runs on, MKL's sgemm reaches ~40-70 GFLOP/s at the 1-64 row shapes of
decoding, while oneDNN with a pre-packed (blocked) weight reaches ~100-130 GFLOP/s (measured in
benchmarks/decode_throughput.py's setting). The packed copy may be bf16: on CPUs with native bf16 dot products
(AVX512-BF16, AMX) oneDNN runs those matmuls ~1.9x faster than fp32 (measured on a Zen 4 EPYC: ~400 vs ~210
GFLOP/s at 128 rows), on CPUs without them ~100x slower. Activations stay fp32 between linears: each call rounds
its input to bf16 and returns fp32 (relative error ~4e-3 per matmul). Training and autograd always use the
plain fp32 F.linear path.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stitchllm.errors import StitchError

MATMUL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 dot products in hardware (Linux: the flags in /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_matmul_dtype(name: str) -> torch.dtype:
    """'auto' -> bf16 where the CPU has native bf16 dot products, else fp32; or 'float32' / 'bfloat16'."""
    if name == "auto":
        return torch.bfloat16 if cpu_has_native_bf16() and _onednn_available() else torch.float32
    if name not in MATMUL_DTYPES:
        raise StitchError(f"unknown matmul dtype {name!r}: use auto, {', '.join(MATMUL_DTYPES)}")
    return MATMUL_DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' or 'bfloat16': the name `resolve_matmul_dtype` takes, as manifests and reports record it."""
    return str(dtype).removeprefix("torch.")


class Linear(nn.Linear):
    """A drop-in nn.Linear with an optional packed fast path for inference (fp32 weights, CPU)."""

    _packed: torch.Tensor | None = None
    _packed_bias: torch.Tensor | None = None
    _packed_dtype: torch.dtype = torch.float32
    _packed_version: int = -1
    _packed_from: weakref.ref | None = None  # the weight the packed copy was made from (a plain attribute would
    # register it as a second parameter)

    def pack(self, dtype: torch.dtype = torch.float32) -> None:
        """Pre-pack the weight for oneDNN, computing in `dtype` (fp32 or bf16); a no-op where that does not apply
        (GPU, weights not fp32, no oneDNN) or where this very weight, unchanged, is already packed in `dtype`
        (every engine built on a catalog asks for its precision again)."""
        w = self.weight
        if (self._packed is not None and self._packed_from is not None and self._packed_from() is w
                and self._packed_version == w._version and self._packed_dtype == dtype):
            return
        if w.device.type == "cpu" and w.dtype == torch.float32 and _onednn_available():
            self._packed_from = weakref.ref(w)
            self._packed = torch.ops.mkldnn._reorder_linear_weight(w.detach().to(dtype), None)
            self._packed_bias = None if self.bias is None else self.bias.detach().to(dtype)
            self._packed_dtype, self._packed_version = dtype, w._version

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is not None and not torch.is_grad_enabled():
            if self._packed_version != self.weight._version:  # weights edited in place since packing
                self.pack(self._packed_dtype)
            if self._packed_dtype == x.dtype:
                return torch.ops.mkldnn._linear_pointwise(x, self._packed, self._packed_bias, "none", [], "")
            y = torch.ops.mkldnn._linear_pointwise(x.to(self._packed_dtype), self._packed, self._packed_bias,
                                                   "none", [], "")
            return y.to(x.dtype)
        return F.linear(x, self.weight, self.bias)


def pack_linears(module: nn.Module, matmul_dtype: torch.dtype = torch.float32,
                 keep_fp32: tuple[nn.Module, ...] = ()) -> None:
    """(Re-)pack every Linear inside `module` to compute in `matmul_dtype`, those in `keep_fp32` in fp32."""
    for m in module.modules():
        if isinstance(m, Linear):
            m.pack(torch.float32 if any(m is k for k in keep_fp32) else matmul_dtype)


def training_autocast(dtype: torch.dtype) -> torch.autocast:
    """Training's counterpart of the packed bf16 path: under autograd, F.linear and the attention matmuls run in
    bf16 with fp32 weights and gradients (1.47x faster healing steps on a Zen 4 EPYC, FAMILY.md); fp32: a no-op."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
