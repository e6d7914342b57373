"""ForwardBatch: which new tokens of which sequences one forward pass computes, packed without padding."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def key_length_mask(starts: list[int], device: torch.device) -> torch.Tensor | None:
    """For single-token sequences at positions `starts`: [B, 1, 1, L] bool, True where key position < the
    sequence's length, L the longest; None when all are equally long."""
    if len(set(starts)) == 1:
        return None
    lengths = torch.tensor(starts, device=device) + 1
    keys = torch.arange(int(lengths.max()), device=device)
    return (keys[None, :] < lengths[:, None])[:, None, None, :]


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
    _decode_mask: torch.Tensor | None = field(init=False, default=None)

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

    def decode_mask(self) -> torch.Tensor | None:
        """For a decode batch: its key_length_mask, computed once per pass (shared by all blocks)."""
        if self._decode_mask is None:
            self._decode_mask = key_length_mask(self.starts, self.device)
        return self._decode_mask

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
