"""StitchLayer: the affine map that carries the large model's residual stream into the small model's."""

from __future__ import annotations

import torch
from torch import nn

from stitchllm.models.linear import Linear


def stitch_key(cut: int, entry: int) -> str:
    """How stitches are named in a store and looked up by a route: large blocks run, small entry block."""
    return f"{cut}-{entry}"


class StitchLayer(nn.Module):
    """y = x W^T + b from width d_large to d_small; joins large block `cut`-1 to small block `entry`."""

    def __init__(self, d_large: int, d_small: int, cut: int, entry: int):
        super().__init__()
        self.cut, self.entry = cut, entry
        self.proj = Linear(d_large, d_small, bias=True)

    @property
    def key(self) -> str:
        return stitch_key(self.cut, self.entry)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [T, d_large] -> [T, d_small]."""
        return self.proj(hidden)

    @torch.no_grad()
    def set_affine(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """weight [d_small, d_large], bias [d_small]."""
        self.proj.weight.copy_(weight)
        self.proj.bias.copy_(bias)
        self.proj.pack()
