"""WorkItem: the plain data the scheduler hands the runner for one request in one step."""

from __future__ import annotations

from dataclasses import dataclass, field

from stitchllm.sampling import SamplingParams


@dataclass(slots=True)
class WorkItem:
    """Tokens of one request to compute this step.

    kind "bottom": a prompt chunk through the large model's bottom blocks only, the ones the router reads (route
    still unknown);
    kind "routed": the whole prompt along the chosen route (continuing from the stored bottom states when
    `from_bottom`), then a sampled token; kind "decode": one token along the route, then a sampled token.
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
        return self.kind != "bottom"


@dataclass(slots=True)
class RunnerOutput:
    """Per request: the sampled token (routed/decode items) or the router's predicted losses (last bottom chunk);
    for the step: the parameters it read (blocks run, norms and heads; what its fixed time grows with)."""

    sampled: dict[str, int] = field(default_factory=dict)
    predicted_loss: dict[str, list[float]] = field(default_factory=dict)
    params_read: int = 0
