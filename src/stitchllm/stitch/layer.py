"""StitchLayer: the trainable map that carries the large model's residual stream into the small model's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stitchllm.models.linear import Linear
from stitchllm.stitch.adapters import BlockAdapters


def stitch_key(cut: int, entry: int) -> str:
    """How stitches are named in a store and looked up by a route: large blocks run, small entry block."""
    return f"{cut}-{entry}"


class StitchLayer(nn.Module):
    """y = x W^T + b, plus (mlp > 0) a residual MLP  up(gelu(down(x / rms(x)))),  from width d_large to d_small;
    joins large block `cut`-1 to small block `entry`.

    Why the MLP reads x / rms(x): the large model's residual stream carries a few channels thousands of times the
    median (attention-sink / massive-activation channels), which an unnormalised nonlinear layer would saturate on.
    `up` starts at zero, so a new MLP stitch computes exactly its affine start."""

    input_scale: torch.Tensor | None = None  # while training with `precondition`: the affine map reads x / scale

    def __init__(self, d_large: int, d_small: int, cut: int, entry: int, mlp: int = 0):
        super().__init__()
        self.cut, self.entry = cut, entry
        self.adapters: BlockAdapters | None = None  # the route's own low-rank updates of the small blocks it runs
        # (stitch/adapters.py); trained, saved and loaded with the stitch
        self.proj = Linear(d_large, d_small, bias=True)
        self.down = Linear(d_large, mlp, bias=True) if mlp else None
        self.up = Linear(mlp, d_small, bias=False) if mlp else None
        if mlp:
            nn.init.zeros_(self.up.weight)

    @property
    def key(self) -> str:
        return stitch_key(self.cut, self.entry)

    @property
    def mlp(self) -> int:
        return self.down.out_features if self.down is not None else 0

    @torch.no_grad()
    def precondition(self, scale: torch.Tensor) -> None:
        """Train the affine map on x / scale (scale [d_large] > 0, e.g. each channel's RMS) with weight W * scale:
        the same function, but Adam's equal-sized steps now move every channel's output alike. Without it the few
        massive-activation channels (thousands of times the median) move the output thousands of times more per
        step than the rest, and training diverges at a learning rate the other channels need."""
        self.proj.weight.mul_(scale)
        self.input_scale = scale

    @torch.no_grad()
    def fold(self) -> None:
        """Undo `precondition` into the weight: a plain affine map again."""
        if self.input_scale is not None:
            self.proj.weight.div_(self.input_scale)
            self.input_scale = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [T, d_large] -> [T, d_small]."""
        out = self.proj(hidden if self.input_scale is None else hidden / self.input_scale)
        if self.down is not None:
            unit = hidden * torch.rsqrt(hidden.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(hidden.dtype)
            out = out + self.up(F.gelu(self.down(unit)))  # [T, mlp] inside
        return out

    def linears(self) -> list[Linear]:
        return [m for m in (self.proj, self.down, self.up) if m is not None]

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every weight by the name a stitch store keeps it under (affine: weight, bias; MLP: mlp.*)."""
        out = {"weight": self.proj.weight, "bias": self.proj.bias}
        if self.down is not None:
            out |= {"mlp.down.weight": self.down.weight, "mlp.down.bias": self.down.bias,
                    "mlp.up.weight": self.up.weight}
        out = {name: t.detach().clone() for name, t in out.items()}
        if self.adapters is not None:
            out |= {f"adapter.{name}": t for name, t in self.adapters.tensors().items()}
        return out

    @torch.no_grad()
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """The inverse of `tensors` (adapters: into the ones this stitch has)."""
        self.set_affine(tensors["weight"], tensors["bias"])
        if self.adapters is not None:
            self.adapters.blocks.load_state_dict({n.removeprefix("adapter."): t for n, t in tensors.items()
                                                  if n.startswith("adapter.")})
        if self.down is not None:
            self.down.weight.copy_(tensors["mlp.down.weight"])
            self.down.bias.copy_(tensors["mlp.down.bias"])
            self.up.weight.copy_(tensors["mlp.up.weight"])
            self.pack()

    def pack(self) -> None:
        """Re-pack every linear after its weights changed (the dense weights stay: stitches keep training)."""
        for linear in self.linears():
            linear.pack()

    @torch.no_grad()
    def set_affine(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """weight [d_small, d_large], bias [d_small]."""
        self.proj.weight.copy_(weight)
        self.proj.bias.copy_(bias)
        self.proj.pack()
