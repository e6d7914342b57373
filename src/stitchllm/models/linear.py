"""Linear: nn.Linear that, for CPU inference, runs on a oneDNN pre-packed copy of its weight.

Why: on the AMD EPYC CPUs this project runs on, MKL's sgemm reaches ~40-70 GFLOP/s at the 1-64 row shapes of
decoding, while oneDNN with a pre-packed (blocked) weight reaches ~100-130 GFLOP/s (measured in
benchmarks/decode_throughput.py's setting). Training and autograd always use the plain F.linear path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class Linear(nn.Linear):
    """A drop-in nn.Linear with an optional packed fast path for inference (fp32, CPU)."""

    _packed: torch.Tensor | None = None
    _packed_version: int = -1

    def pack(self) -> None:
        """Pre-pack the weight for oneDNN; a no-op where that does not apply (GPU, other dtypes, no oneDNN)."""
        w = self.weight
        if w.device.type == "cpu" and w.dtype == torch.float32 and _onednn_available():
            self._packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), None)
            self._packed_version = w._version

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is not None and not torch.is_grad_enabled():
            if self._packed_version != self.weight._version:  # weights edited in place since packing
                self.pack()
            return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)
