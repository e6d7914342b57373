"""WorkItem: the plain data the scheduler hands the runner for one request in one step."""

from __future__ import annotations

from dataclasses import dataclass, field

from stitchllm.engine.request import TokenLogprob
from stitchllm.sampling import SamplingParams


@dataclass(slots=True)
class WorkItem:
    """Tokens of one request to compute this step.

    kind "bottom": a prompt chunk through the large model's bottom blocks only, the ones the router reads (route
    still unknown);
    kind "routed": the whole prompt along the chosen route (continuing from the stored bottom states when
    `from_bottom`), then a sampled token (none when max_tokens is 0: the request only scores its prompt);
    kind "decode": one token along the route, then a sampled token.
    """

    request_id: str
    kind: str
    token_ids: list[int]
    start: int
    route: str | None
    slots: dict[str, int]
    params: SamplingParams
    last_chunk: bool = False
    from_bottom: bool = False

    @property
    def samples(self) -> bool:
        return self.kind != "bottom" and self.params.max_tokens > 0

    @property
    def scores_prompt(self) -> bool:
        """The prompt's own logprobs are wanted: computed from the routed item, which holds the whole prompt."""
        return self.kind == "routed" and self.params.prompt_logprobs is not None


@dataclass(slots=True)
class RunnerOutput:
    """Per request: the sampled token (routed/decode items) or the router's predicted losses (last bottom chunk),
    and the logprobs it asked for (of the sampled token; of the prompt, on its routed item);
    for the step: the parameters it read (blocks run, norms and heads; what its fixed time grows with)."""

    sampled: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, TokenLogprob] = field(default_factory=dict)
    prompt_logprobs: dict[str, list[TokenLogprob | None]] = field(default_factory=dict)
    predicted_loss: dict[str, list[float]] = field(default_factory=dict)
    params_read: int = 0
