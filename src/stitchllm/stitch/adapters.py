"""Route adapters: one stitched route's own low-rank updates of the small model's blocks it runs.

Why: tuning the small model's top blocks together with the stitch closes more of a route's gap to the large model
than the stitch alone (docs/STITCHING.md, run D: L24-S21 from ppl 13.9 to 12.8 with rank 16). Those blocks are
shared, by `small` itself and by every route that enters below them, so tuning them in place makes the others
worse (`small` 12.77 -> 13.26 in that run). An adapter leaves the shared weights as they are: while a batch runs,
each adapted linear adds  x A^T B^T  to its output on the rows of the route that owns the adapter, and on no
others (`adapted`). Routes keep sharing one batched pass through each block; the update costs 2 r (in + out)
FLOPs per token and linear (rank 16 on Qwen2.5-Coder-0.5B: 0.65 MFLOP per block, 0.03% of the block's).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from stitchllm.models.decoder import DecoderModel

LINEARS = ("qkv", "o_proj", "gate_up", "down")  # every matmul of a DecoderBlock


class LowRank(nn.Module):
    """x [T, in] -> x A^T B^T [T, out], A [rank, in], B [out, rank]. B starts at zero: a new update changes
    nothing."""

    def __init__(self, d_in: int, d_out: int, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        self.a = nn.Parameter(torch.randn(rank, d_in, generator=generator) / d_in ** 0.5)
        self.b = nn.Parameter(torch.zeros(d_out, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.a.T.to(x.dtype)) @ self.b.T.to(x.dtype)


class BlockAdapters(nn.Module):
    """A rank-`rank` update of every linear of the small model's blocks [first, num_layers)."""

    def __init__(self, small: DecoderModel, first: int, rank: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.first, self.rank = first, rank
        self.blocks = nn.ModuleDict()  # {"<block index>": {"<linear name>": LowRank}}
        for i in range(first, small.config.num_layers):
            linears = {name: getattr(small.blocks[i], name) for name in LINEARS}
            self.blocks[str(i)] = nn.ModuleDict({name: LowRank(lin.in_features, lin.out_features, rank, gen)
                                                 for name, lin in linears.items()})

    def deltas(self) -> Iterator[tuple[int, str, LowRank]]:
        """(block index, linear name, its update) for every adapted linear."""
        for block, linears in self.blocks.items():
            for name, delta in linears.items():
                yield int(block), name, delta

    def tensors(self) -> dict[str, torch.Tensor]:
        """{"<block>.<linear>.a" / ".b": tensor}: how a stitch store keeps them."""
        return {name: t.detach().clone() for name, t in self.blocks.state_dict().items()}

    @staticmethod
    def shaped_for(small: DecoderModel, tensors: dict[str, torch.Tensor]) -> BlockAdapters:
        """Adapters of the blocks and rank that `tensors` (as `tensors()` names them) hold, for the small model
        they were trained on; StitchLayer.load_tensors then fills them."""
        first = min(int(name.split(".")[0]) for name in tensors)
        return BlockAdapters(small, first, rank=tensors[f"{first}.{LINEARS[0]}.a"].shape[0])


@contextmanager
def adapted(model: DecoderModel, spans: list[tuple[slice, BlockAdapters | None]]) -> Iterator[None]:
    """Within the block, each adapter's updates apply to its rows (a slice of the packed batch's tokens) in every
    block it covers; other rows, and rows whose route has none (None), run the shared weights alone."""
    touched = []
    for rows, adapters in spans:
        for block, name, delta in adapters.deltas() if adapters is not None else ():
            linear = getattr(model.blocks[block], name)
            linear.deltas = linear.deltas + ((rows, delta),)
            touched.append(linear)
    try:
        yield
    finally:
        for linear in touched:
            linear.deltas = ()
