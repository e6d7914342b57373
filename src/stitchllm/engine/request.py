"""Request: one generation as the scheduler sees it (plain Python, no tensors)."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from stitchllm.sampling import SamplingParams


class Phase(enum.Enum):
    """Where a request is on its way; the scheduler turns phases into work for the runner."""

    WAITING = "waiting"  # not admitted: holds no KV cache
    BOTTOM = "bottom"  # prompt passing the large model's bottom blocks (router features), in chunks
    ROUTED = "routed"  # route known; the prompt's remaining blocks run next
    DECODE = "decode"  # one token per step
    FINISHED = "finished"


@dataclass
class Request:
    """A prompt, its sampling settings, its route (pinned or chosen by the policy) and what it has produced."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    route: str | None = None  # None until the policy chooses (auto); set at once when pinned
    pinned: bool = False
    phase: Phase = Phase.WAITING
    bottom_done: int = 0  # prompt tokens through the bottom blocks
    output_ids: list[int] = field(default_factory=list)
    slots: dict[str, int] = field(default_factory=dict)  # model name -> KV-cache slot
    finish_reason: str | None = None
    arrival: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return self.prompt_len + len(self.output_ids)

    @property
    def is_finished(self) -> bool:
        return self.phase is Phase.FINISHED


@dataclass(slots=True)
class TokenLogprob:
    """One position: the token that stands there (sampled or given), its logprob, and the top-N (id, logprob)
    pairs by logprob, descending (the chosen token among them only when it is one of the N most likely)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass(slots=True)
class RequestOutput:
    """What one engine step produced for one request; logprobs only when the request asked for them (the
    prompt's once, with the request's first output; its first entry is None)."""

    request_id: str
    new_token_ids: list[int]
    finished: bool
    finish_reason: str | None
    route: str | None
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None  # one per new token
    prompt_logprobs: list[TokenLogprob | None] | None = None
