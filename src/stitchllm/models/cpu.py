"""What this CPU can compute, as PyTorch and oneDNN see it: detected once, reported, and overridable for tests.

Two facts matter for the linear layers (models/linear.py):
- `bf16_matmul`: oneDNN can run bf16 matmuls at all. Its bf16 reorder needs AVX512BW+VL+DQ or AVX-NE-CONVERT; on
  an AVX2-only CPU `torch.ops.mkldnn._reorder_linear_weight` raises instead. We ask oneDNN itself
  (`torch.ops.mkldnn._is_mkldnn_bf16_supported`), so the check agrees with what the kernels will do.
- `native_bf16`: the CPU computes bf16 dot products in hardware (AVX512-BF16 or AMX), where bf16 matmuls run
  ~1.9x faster than fp32; `--matmul-dtype auto` picks bf16 only here.

Two more matter for quantised weights (models/quantized.py): whether this PyTorch build runs its int8 and int4
weight-only CPU kernels (`aten._weight_int8pack_mm`, `aten._weight_int4pack_mm_for_cpu`). We ask by running each
once on a tiny matrix, so a build that declares an op but cannot run it on this CPU counts as lacking it.

`STITCHLLM_CPU_BF16=0` makes the process behave as on a CPU without bf16 (how the refusal is tested on every
machine, and how an AVX2-only CI run is rehearsed on an AVX-512 one); `STITCHLLM_CPU_INT8=0` and
`STITCHLLM_CPU_INT4=0` do the same for the quantised kernels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import torch

DISABLE_BF16_ENV = "STITCHLLM_CPU_BF16"
DISABLE_INT8_ENV = "STITCHLLM_CPU_INT8"
DISABLE_INT4_ENV = "STITCHLLM_CPU_INT4"


@dataclass(frozen=True, slots=True)
class CpuFeatures:
    """The CPU capabilities the runtime chooses kernels by."""

    bf16_matmul: bool  # oneDNN runs bf16 matmuls (emulated or native)
    native_bf16: bool  # hardware bf16 dot products: bf16 is the fast path
    capability: str  # PyTorch's own name for the vector ISA it dispatches to (AVX2, AVX512, ...)
    int8_weights: bool = False  # aten._weight_int8pack_mm runs here
    int4_weights: bool = False  # aten._weight_int4pack_mm_for_cpu runs here

    def describe(self) -> str:
        bf16 = "native bf16" if self.native_bf16 else ("bf16 emulated" if self.bf16_matmul else "no bf16")
        quant = [name for name, ok in (("int8", self.int8_weights), ("int4", self.int4_weights)) if ok]
        return f"{self.capability}, {bf16}, {'/'.join(quant) or 'no'} weight kernels"


def _onednn_bf16() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def _hardware_bf16() -> bool:
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


def _runs(kernel) -> bool:
    try:
        kernel()
        return True
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _int8_kernel() -> None:
    # x [1, 32] @ w [16, 32]^T, per-row scales [16]
    torch.ops.aten._weight_int8pack_mm(torch.ones(1, 32), torch.ones(16, 32, dtype=torch.int8), torch.ones(16))


def _int4_kernel() -> None:
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.ones(16, 32, dtype=torch.int32), 2)
    torch.ops.aten._weight_int4pack_mm_for_cpu(torch.ones(1, 32), packed, 32, torch.ones(1, 16, 2))


def _enabled(env: str) -> bool:
    return os.environ.get(env, "").strip() != "0"


@lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This process's CPU features (cached; `STITCHLLM_CPU_BF16=0`, `_INT8=0`, `_INT4=0` hide what they name)."""
    capability = torch.backends.cpu.get_cpu_capability()
    int8 = _enabled(DISABLE_INT8_ENV) and _runs(_int8_kernel)
    int4 = _enabled(DISABLE_INT4_ENV) and _runs(_int4_kernel)
    bf16 = _enabled(DISABLE_BF16_ENV) and _onednn_bf16()
    return CpuFeatures(bf16_matmul=bf16, native_bf16=bf16 and _hardware_bf16(), capability=capability,
                       int8_weights=int8, int4_weights=int4)
