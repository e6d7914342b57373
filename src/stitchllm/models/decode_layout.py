"""DecodeLayout: how sequences that each bring one token read their keys from the KV cache in one attention call."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class DecodeLayout:
    """Where B single-token sequences' keys live, decided once per forward pass and shared by every block.

    Slots are handed out lowest first, so a decode batch's slots usually fill most of a range of the cache. Then
    attention reads that range as a zero-copy view: the batch's queries go to their slots' rows, rows of slots
    outside the batch get zero queries and their outputs are dropped. Gathering the keys instead (index_select)
    copies every sequence's keys and values in every block before attention reads them again; it is kept for
    slots scattered over more than twice their number.
    """

    first: int | None  # first slot of the range read as a view; None: gather `slots`
    span: int  # rows attention computes: the range's length, or B when gathering
    rows: torch.Tensor  # [B] each sequence's row among them
    slots: torch.Tensor  # [B]
    keys: int  # key positions read: the longest context
    mask: torch.Tensor | None  # [span, 1, 1, keys] True where a row may attend; None when nothing is masked
    in_order: bool  # rows == arange(B) and span == B: queries and outputs need no reordering

    @classmethod
    def build(cls, slots: list[int], starts: list[int], device: torch.device) -> "DecodeLayout":
        count, low, high = len(slots), min(slots), max(slots) + 1
        slot_ids = torch.tensor(slots, device=device)
        if high - low <= 2 * count:
            first, span, rows = low, high - low, slot_ids - low
        else:
            first, span, rows = None, count, torch.arange(count, device=device)
        lengths = torch.ones(span, dtype=torch.long, device=device)  # rows outside the batch read one key
        lengths[rows] = torch.tensor(starts, device=device) + 1
        keys = max(starts) + 1
        in_order = span == count and bool((rows == torch.arange(count, device=device)).all())
        needs_mask = span > count or len(set(starts)) > 1
        mask = (torch.arange(keys, device=device)[None, :] < lengths[:, None])[:, None, None, :] if needs_mask else None
        return cls(first, span, rows, slot_ids, keys, mask, in_order)

    def cache_view(self, cache: torch.Tensor) -> torch.Tensor:
        """[slots, kv, max_len, hd] -> the [span, kv, keys, hd] attention reads."""
        if self.first is None:
            return cache[:, :, : self.keys].index_select(0, self.slots)
        return cache[self.first : self.first + self.span, :, : self.keys]
