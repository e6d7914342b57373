"""What this CPU can compute, as PyTorch and oneDNN see it: detected once, reported, and overridable for tests.

Two facts matter for the linear layers (models/linear.py):
- `bf16_matmul`: oneDNN can run bf16 matmuls at all. Its bf16 reorder needs AVX512BW+VL+DQ or AVX-NE-CONVERT; on
  an AVX2-only CPU `torch.ops.mkldnn._reorder_linear_weight` raises instead. We ask oneDNN itself
  (`torch.ops.mkldnn._is_mkldnn_bf16_supported`), so the check agrees with what the kernels will do.
- `native_bf16`: the CPU computes bf16 dot products in hardware (AVX512-BF16 or AMX), where bf16 matmuls run
  ~1.9x faster than fp32; `--matmul-dtype auto` picks bf16 only here.

`STITCHLLM_CPU_BF16=0` makes the process behave as on a CPU without bf16 (how the refusal is tested on every
machine, and how an AVX2-only CI run is rehearsed on an AVX-512 one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import torch

DISABLE_BF16_ENV = "STITCHLLM_CPU_BF16"


@dataclass(frozen=True, slots=True)
class CpuFeatures:
    """The CPU capabilities the runtime chooses kernels by."""

    bf16_matmul: bool  # oneDNN runs bf16 matmuls (emulated or native)
    native_bf16: bool  # hardware bf16 dot products: bf16 is the fast path
    capability: str  # PyTorch's own name for the vector ISA it dispatches to (AVX2, AVX512, ...)

    def describe(self) -> str:
        bf16 = "native bf16" if self.native_bf16 else ("bf16 emulated" if self.bf16_matmul else "no bf16")
        return f"{self.capability}, {bf16}"


def _onednn_bf16() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def _hardware_bf16() -> bool:
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


@lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This process's CPU features (cached; `STITCHLLM_CPU_BF16=0` hides bf16)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if os.environ.get(DISABLE_BF16_ENV, "").strip() == "0":
        return CpuFeatures(bf16_matmul=False, native_bf16=False, capability=capability)
    bf16 = _onednn_bf16()
    return CpuFeatures(bf16_matmul=bf16, native_bf16=bf16 and _hardware_bf16(), capability=capability)
