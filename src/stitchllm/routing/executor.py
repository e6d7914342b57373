"""RouteExecutor: runs any route through the block runtime, for scoring and for generation with a KV cache."""

from __future__ import annotations

import torch

from stitchllm.family.family import Family
from stitchllm.generation import LastLogitsFn
from stitchllm.eval.perplexity import FullLogitsFn
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.kv_cache import KVCache
from stitchllm.routing.route import Route
from stitchllm.stitch.adapters import adapted
from stitchllm.stitch.layer import StitchLayer, stitch_key


class RouteExecutor:
    """Composes embed, block segments, stitches, norm and head of a family along a route."""

    def __init__(self, family: Family, stitches: dict[str, StitchLayer]):
        self.family, self.stitches = family, stitches

    def stitch(self, cut: int, entry: int) -> StitchLayer:
        return self.stitches[stitch_key(cut, entry)]

    def hidden(
        self, route: Route, ids: torch.Tensor, batch: ForwardBatch, caches: list[KVCache | None] | None = None
    ) -> torch.Tensor:
        """Packed ids [T] -> final hidden [T, d] of the route's last model (before its norm)."""
        caches = caches or [None] * len(route.segments)
        first = route.segments[0]
        hidden = self.family.model(first.model).embed(ids)
        for i, (seg, cache) in enumerate(zip(route.segments, caches)):
            model = self.family.model(seg.model)
            if i == 0:
                hidden = model.run_blocks(hidden, batch, cache, seg.first, seg.end)
                continue
            stitch = self.stitch(route.segments[i - 1].end, seg.first)
            with adapted(model, [(slice(None), stitch.adapters)]):
                hidden = model.run_blocks(stitch(hidden), batch, cache, seg.first, seg.end)
        return hidden

    def large_pass(self, ids: torch.Tensor, batch: ForwardBatch, keep: set[int]) -> dict[int, torch.Tensor]:
        """One cache-free pass of the whole large model (`DecoderModel.residual_states`): the residual stream after
        block k-1 for every k in `keep`, and the final one under key n_L. Many routes can then finish from these
        states (scoring, training)."""
        return self.family.large.residual_states(ids, batch, keep)

    def finish(self, route: Route, states: dict[int, torch.Tensor], ids: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """A one-stitch (or whole-model) route's final hidden, reusing the large model's states from large_pass."""
        if not route.stitches:
            if route.head_model == "large":
                return states[self.family.large.config.num_layers]
            return self.hidden(route, ids, batch)
        stitch = self.stitch(*route.stitches[0])
        with adapted(self.family.small, [(slice(None), stitch.adapters)]):
            return self.family.small.run_blocks(stitch(states[stitch.cut]), batch, None, stitch.entry)

    def logits(self, route: Route, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., d] -> logits [..., V] with the route's final norm and head."""
        model = self.family.model(route.head_model)
        return model.head(model.norm(hidden))

    def full_logits(self, route: Route) -> FullLogitsFn:
        """Scoring without a cache: packed windows starting at position 0 -> logits of every token."""
        return lambda ids, batch: self.logits(route, self.hidden(route, ids, batch))

    def new_caches(self, route: Route, num_slots: int, max_len: int) -> list[KVCache]:
        """One cache per segment, holding only the blocks that segment runs."""
        return [self.family.model(s.model).new_cache(num_slots, max_len, s.first, s.end) for s in route.segments]

    def last_logits(self, route: Route, num_slots: int, max_len: int) -> LastLogitsFn:
        """Generation along the route with its own KV caches: logits of each sequence's last new token."""
        caches = self.new_caches(route, num_slots, max_len)

        def run(ids: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
            hidden = self.hidden(route, ids, batch, caches)
            return self.logits(route, hidden[batch.last_token_indices()])

        return run
