"""ModelRunner: owns the tensors (weights, KV caches, stored prompt states) and runs one step of work items.

Block-level execution: every item's tokens climb a "ladder" of the large model's blocks; items leave it at their
cut (or after the bottom blocks the router reads, for prompts still being routed), cross their stitch, and climb
the small model's blocks from their entry block. Between two block indices where no item enters or leaves, all
present tokens run as one packed batch, so blocks shared by several routes run once for all of them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from stitchllm.engine.logprobs import prompt_logprobs, token_logprobs
from stitchllm.engine.work import RunnerOutput, WorkItem
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.decoder import DecoderModel
from stitchllm.models.kv_cache import KVCache
from stitchllm.routing.catalog import RouteCatalog
from stitchllm.routing.features import pool_features
from stitchllm.routing.router_model import RouterMLP
from stitchllm.sampling import sample
from stitchllm.stitch.adapters import BlockAdapters, adapted


@dataclass
class _Climb:
    """One item's way through one model: blocks [first, end) starting from `hidden` [n, d]."""

    item: WorkItem
    first: int
    end: int
    hidden: torch.Tensor
    adapters: BlockAdapters | None = None  # the route's own updates of the blocks it climbs (stitch/adapters.py)


def _ladder(model: DecoderModel, cache: KVCache, model_name: str, climbs: list[_Climb]) -> int:
    """Run every climb through its blocks, batching all climbs present between consecutive entry/exit points.
    Returns the parameters read: each block run once, whatever the number of tokens in it."""
    bounds = sorted({c.first for c in climbs} | {c.end for c in climbs})
    blocks_run = 0
    for lo, hi in zip(bounds, bounds[1:]):
        members = [c for c in climbs if c.first <= lo and c.end >= hi]
        if not members:
            continue
        batch = ForwardBatch([c.item.slots[model_name] for c in members], [c.item.start for c in members],
                             [len(c.item.token_ids) for c in members])
        spans = []
        if any(c.adapters for c in members):  # most steps: no route with adapters, nothing to set per row
            offsets = [0, *itertools.accumulate(batch.lengths)]
            spans = [(slice(offsets[i], offsets[i + 1]), c.adapters) for i, c in enumerate(members)]
        with adapted(model, spans):
            hidden = model.run_blocks(torch.cat([c.hidden for c in members]), batch, cache, lo, hi)
        for c, h in zip(members, hidden.split(batch.lengths)):
            c.hidden = h
        blocks_run += hi - lo
    return blocks_run * model.config.block_params


class ModelRunner:
    """Executes WorkItems; the only engine part that touches tensors."""

    def __init__(self, catalog: RouteCatalog, router: RouterMLP | None, slots: dict[str, int], max_model_len: int,
                 bottom_blocks: int):
        self.catalog, self.router = catalog, router
        self.route_names = [r.name for r in catalog.routes]  # the order of every predicted-loss list
        fam = catalog.family
        self.models = {"large": fam.large, "small": fam.small}
        self.caches = {m: self.models[m].new_cache(n, max_model_len) for m, n in slots.items() if n > 0}
        self.bottom_blocks = bottom_blocks  # the large blocks a prompt runs before the router reads it
        self.bottom_states: dict[str, list[torch.Tensor]] = {}  # prompt states after the bottom blocks
        self.generators: dict[str, torch.Generator | None] = {}

    def release(self, request_id: str) -> None:
        self.bottom_states.pop(request_id, None)
        self.generators.pop(request_id, None)

    @torch.inference_mode()
    def run(self, items: list[WorkItem]) -> RunnerOutput:
        large, small = self.models["large"], self.models["small"]
        out = RunnerOutput()
        l_climbs, s_climbs, finals = [], [], []  # finals: (item, model name, climb)
        for it in items:
            ids = torch.tensor(it.token_ids)
            if it.route == "small":
                c = _Climb(it, 0, small.config.num_layers, small.embed(ids))
                s_climbs.append(c)
                finals.append((it, "small", c))
                continue
            if it.kind == "bottom":
                end = self.bottom_blocks
            elif it.route == "large":
                end = large.config.num_layers
            else:
                end = self.catalog.route(it.route).stitches[0][0]
            if it.kind == "routed" and it.from_bottom:  # continue from the states the router already read
                c = _Climb(it, self.bottom_blocks, end, torch.cat(self.bottom_states.pop(it.request_id)))
            else:
                c = _Climb(it, 0, end, large.embed(ids))
            l_climbs.append(c)
            if it.route == "large":
                finals.append((it, "large", c))
        out.params_read += _ladder(large, self.caches.get("large"), "large", l_climbs)
        for c in l_climbs:
            it = c.item
            if it.kind == "bottom":
                self.bottom_states.setdefault(it.request_id, []).append(c.hidden)
                if it.last_chunk and self.router is not None:
                    states = torch.cat(self.bottom_states[it.request_id])
                    feats = pool_features(states, [len(states)])
                    out.predicted_loss[it.request_id] = self.router.losses_for(feats, self.route_names)[0].tolist()
            elif it.route != "large":
                stitch = self.catalog.executor.stitch(*self.catalog.route(it.route).stitches[0])
                s = _Climb(it, stitch.entry, small.config.num_layers, stitch(c.hidden), stitch.adapters)
                s_climbs.append(s)
                finals.append((it, "small", s))
        out.params_read += _ladder(small, self.caches.get("small"), "small", s_climbs)
        self._sample(finals, out)
        self._score_prompts(finals, out)
        return out

    def _score_prompts(self, finals: list, out: RunnerOutput) -> None:
        """Logprobs of every prompt token on the request's route, for routed items that asked (echo): their climb
        holds the final hidden states of the whole prompt, which the norm and head turn into logits by chunks."""
        for it, name, c in finals:
            if it.scores_prompt:
                model = self.models[name]
                entries, passes = prompt_logprobs(model, c.hidden, it.token_ids, it.params.prompt_logprobs)
                out.prompt_logprobs[it.request_id] = entries
                out.params_read += passes * model.config.norm_and_head_params

    def _sample(self, finals: list, out: RunnerOutput) -> None:
        """Norm and head on each sampling item's last token, one batched head per model, then per-request sampling."""
        for name in ("large", "small"):
            group = [(it, c) for it, m, c in finals if m == name and it.samples]
            if not group:
                continue
            model = self.models[name]
            out.params_read += model.config.norm_and_head_params
            logits = model.head(model.norm(torch.stack([c.hidden[-1] for _, c in group])))  # [B, V]
            gens = []
            for it, _ in group:
                if it.request_id not in self.generators:
                    self.generators[it.request_id] = it.params.make_generator()
                gens.append(self.generators[it.request_id])
            for row, ((it, _), token) in enumerate(zip(group, sample(logits, [it.params for it, _ in group], gens))):
                out.sampled[it.request_id] = token
                if it.params.logprobs is not None:  # the raw distribution's, before temperature (engine/logprobs.py)
                    out.logprobs[it.request_id] = token_logprobs(logits[row : row + 1], [token], it.params.logprobs)[0]
