"""ForwardBatch: which new tokens of which sequences one forward pass computes, packed without padding."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from stitchllm.models.decode_layout import DecodeLayout


@dataclass(slots=True)
class ForwardBatch:
    """Packed tokens of several sequences: sequence i contributes `lengths[i]` new tokens at positions
    `starts[i] .. starts[i]+lengths[i]-1` and keeps its keys/values in KV-cache slot `slots[i]`."""

    slots: list[int]
    starts: list[int]
    lengths: list[int]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    positions: torch.Tensor = field(init=False)  # [T] absolute position of every packed token
    token_slots: torch.Tensor = field(init=False)  # [T] cache slot of every packed token
    is_decode: bool = field(init=False)  # every sequence brings exactly one token (the steady state)
    _rope: dict = field(init=False, default_factory=dict)
    _decode_layout: DecodeLayout | None = field(init=False, default=None)
    _decode_rows: tuple[torch.Tensor, torch.Tensor] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if not (len(self.slots) == len(self.starts) == len(self.lengths)):
            raise ValueError("slots, starts and lengths must have one entry per sequence")
        if any(n <= 0 for n in self.lengths):
            raise ValueError("every sequence in a batch must bring at least one new token")
        self.positions = torch.cat(
            [torch.arange(s, s + n) for s, n in zip(self.starts, self.lengths)]
        ).to(self.device)
        self.token_slots = torch.repeat_interleave(
            torch.tensor(self.slots), torch.tensor(self.lengths)
        ).to(self.device)
        self.is_decode = all(n == 1 for n in self.lengths)

    @property
    def num_tokens(self) -> int:
        return self.positions.shape[0]

    def decode_layout(self) -> DecodeLayout:
        """Where the single-token sequences' keys are in the cache, computed once per pass (shared by all blocks)."""
        if self._decode_layout is None:
            single = [i for i, n in enumerate(self.lengths) if n == 1]
            self._decode_layout = DecodeLayout.build([self.slots[i] for i in single],
                                                     [self.starts[i] for i in single], self.device)
        return self._decode_layout

    def decode_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[B] cache slots and [B] context lengths (the new token included) of the single-token sequences, in
        batch order; computed once per pass."""
        if self._decode_rows is None:
            single = [i for i, n in enumerate(self.lengths) if n == 1]
            self._decode_rows = (torch.tensor([self.slots[i] for i in single]),
                                 torch.tensor([self.starts[i] + 1 for i in single]))
        return self._decode_rows

    def last_token_indices(self) -> torch.Tensor:
        """[B] index into the packed tokens of each sequence's last new token (whose logits sample the next)."""
        ends = torch.tensor(self.lengths).cumsum(0) - 1
        return ends.to(self.device)

    def rope(self, table) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for this batch's positions from a model's RotaryTable, computed once per model per pass."""
        key = id(table)
        if key not in self._rope:
            self._rope[key] = table.lookup(self.positions)
        return self._rope[key]

    def with_slots(self, slots: list[int]) -> "ForwardBatch":
        """The same tokens addressed to other cache slots (a second model's cache along a stitched route)."""
        return ForwardBatch(slots, self.starts, self.lengths, self.device)
