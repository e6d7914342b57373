"""Per-request sampling: greedy, temperature, top-k, top-p, each request with its own seeded generator."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from stitchllm.errors import StitchError

MAX_LOGPROBS = 20  # the most alternatives a request may ask for per token (OpenAI's limit)


@dataclass(slots=True)
class SamplingParams:
    """How one request picks its tokens and when it stops (OpenAI-style semantics; temperature 0 = greedy)."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # with each sampled token: its logprob and the top-N (None: no logprobs)
    prompt_logprobs: int | None = None  # the same for every prompt token after the first (None: the prompt is
    # not scored); a prompt-scoring request may have max_tokens=0

    def __post_init__(self) -> None:
        if self.max_tokens < (0 if self.prompt_logprobs is not None else 1):
            raise StitchError(f"max_tokens must be at least 1, got {self.max_tokens} (0 only to score the prompt)")
        for name in ("logprobs", "prompt_logprobs"):
            n = getattr(self, name)
            if n is not None and not 0 <= n <= MAX_LOGPROBS:
                raise StitchError(f"{name} must be between 0 and {MAX_LOGPROBS}, got {n}")
        if not 0.0 <= self.temperature <= 2.0:
            raise StitchError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise StitchError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise StitchError(f"top_k must be >= 0, got {self.top_k}")

    def make_generator(self) -> torch.Generator | None:
        return torch.Generator().manual_seed(self.seed) if self.seed is not None else None


def sample_one(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """logits [V] (float32) -> one token id."""
    if params.temperature == 0.0:
        return int(logits.argmax())
    logits = logits / params.temperature
    if params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the most likely token)
        drop = sorted_probs.cumsum(0) - sorted_probs >= params.top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def sample(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> list[int]:
    """logits [B, V] -> B token ids; an all-greedy batch takes one argmax."""
    if all(p.temperature == 0.0 for p in params):
        return logits.argmax(dim=-1).tolist()
    return [sample_one(row, p, g) for row, p, g in zip(logits, params, generators)]
