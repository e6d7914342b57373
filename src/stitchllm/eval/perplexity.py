"""Perplexity of a model (later: of any route) over windows of real text."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stitchllm.models.batch import ForwardBatch
from stitchllm.models.decoder import DecoderModel

# Scores packed windows, each starting at position 0, without a KV cache: ids [T] -> logits [T, V].
FullLogitsFn = Callable[[torch.Tensor, ForwardBatch], torch.Tensor]


@dataclass(slots=True)
class NllTotal:
    """Summed negative log-likelihood over scored predictions."""

    nll: float = 0.0
    tokens: int = 0

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")


def model_full_logits(model: DecoderModel) -> FullLogitsFn:
    return lambda ids, batch: model(ids, batch, None)


def packed_windows(windows: list[torch.Tensor], tokens_per_pass: int = 2048) -> Iterable[list[torch.Tensor]]:
    """Group windows so that one forward pass holds about `tokens_per_pass` tokens."""
    group: list[torch.Tensor] = []
    for w in windows:
        if group and sum(len(g) for g in group) + len(w) > tokens_per_pass:
            yield group
            group = []
        group.append(w)
    if group:
        yield group


def window_logits(full_logits: FullLogitsFn, group: list[torch.Tensor]) -> list[torch.Tensor]:
    """Logits [n_i, V] of every window in the group, computed in one packed pass."""
    lengths = [len(w) for w in group]
    logits = full_logits(torch.cat(group), ForwardBatch(list(range(len(group))), [0] * len(group), lengths))
    return list(logits.split(lengths))


@torch.inference_mode()
def perplexity(full_logits: FullLogitsFn, windows: list[torch.Tensor]) -> NllTotal:
    """Mean next-token NLL over all windows (predictions inside a window only)."""
    total = NllTotal()
    for group in packed_windows(windows):
        for w, logits in zip(group, window_logits(full_logits, group)):
            total.nll += float(F.cross_entropy(logits[:-1].float(), w[1:], reduction="sum"))
            total.tokens += len(w) - 1
    return total
