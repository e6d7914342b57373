"""Benchmark workload: real-text prompts with their true continuations, and Poisson arrival times."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """A prompt of real text; `continuation` is what the text says next (for teacher-forced quality)."""

    index: int
    prompt: list[int]
    continuation: list[int]


def make_requests(ids: torch.Tensor, n: int, prompt_tokens: int, output_tokens: int) -> list[BenchRequest]:
    """n spans of prompt + continuation spread over the id stream (spans may overlap when the text is short)."""
    span = prompt_tokens + output_tokens
    if len(ids) < span:
        raise ValueError(f"text has {len(ids)} tokens, a request needs {span}")
    starts = torch.linspace(0, len(ids) - span, n).long().tolist()
    return [BenchRequest(i, ids[s : s + prompt_tokens].tolist(), ids[s + prompt_tokens : s + span].tolist())
            for i, s in enumerate(starts)]


def poisson_arrivals(rate: float, duration: float, seed: int) -> list[float]:
    """Arrival times (seconds from start) of a Poisson process of `rate` requests/s over `duration`."""
    g = torch.Generator().manual_seed(seed)
    times, t = [], 0.0
    while True:
        t += float(torch.empty(1).exponential_(rate, generator=g))
        if t >= duration:
            return times
        times.append(t)
