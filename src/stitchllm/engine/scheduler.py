"""Scheduler: admission, chunked prefill and decode under one token budget per step (plain Python, no tensors)."""

from __future__ import annotations

from collections import deque

from stitchllm.engine.config import EngineConfig
from stitchllm.engine.kv_manager import KVCacheManager
from stitchllm.engine.request import Phase, Request
from stitchllm.engine.work import WorkItem


def models_of(route: str | None) -> set[str]:
    """Models whose KV cache a route needs; an unrouted request reserves both until the router decides."""
    if route is None:
        return {"large", "small"}
    if route == "large":
        return {"large"}
    if route == "small":
        return {"small"}
    return {"large", "small"}


class Scheduler:
    """Each step: decode tokens first, then prompts already admitted, then new admissions while budget and KV last.

    Admission reserves a whole slot (max_model_len tokens) in every model the route needs, so a running request
    can never run out of cache: requests wait instead of failing, and nothing needs to be preempted.
    """

    def __init__(self, config: EngineConfig, kv: KVCacheManager):
        self.config, self.kv = config, kv
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def schedule(self) -> list[WorkItem]:
        budget = self.config.max_num_batched_tokens
        items: list[WorkItem] = []
        for r in self.running:
            if r.phase is Phase.DECODE and budget > 0:
                items.append(self._item(r, "decode", [r.output_ids[-1]], r.num_tokens - 1))
                budget -= 1
        for r in self.running:
            if r.phase is Phase.ROUTED and (budget >= r.prompt_len or not items):
                items.append(self._item(r, "routed", r.prompt_ids, 0, from_bottom=r.bottom_done == r.prompt_len))
                budget -= r.prompt_len
            elif r.phase is Phase.BOTTOM and budget > 0:
                budget -= self._bottom_chunk(r, budget, items)
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            r = self.waiting[0]
            if not self.kv.can_allocate(models_of(r.route)):
                break  # admission control: wait for KV to be freed
            self.waiting.popleft()
            r.slots = self.kv.allocate(models_of(r.route))
            self.running.append(r)
            if r.route is None:
                r.phase = Phase.BOTTOM
                budget -= self._bottom_chunk(r, budget, items)
            else:
                r.phase = Phase.ROUTED
                if budget >= r.prompt_len or not items:
                    items.append(self._item(r, "routed", r.prompt_ids, 0))
                    budget -= r.prompt_len
        return items

    def _bottom_chunk(self, r: Request, budget: int, items: list[WorkItem]) -> int:
        n = min(budget, r.prompt_len - r.bottom_done)
        chunk = r.prompt_ids[r.bottom_done : r.bottom_done + n]
        items.append(self._item(r, "bottom", chunk, r.bottom_done, last_chunk=r.bottom_done + n == r.prompt_len))
        return n

    @staticmethod
    def _item(r: Request, kind: str, ids: list[int], start: int, **kw) -> WorkItem:
        return WorkItem(r.request_id, kind, list(ids), start, r.route, dict(r.slots), r.params, **kw)

    def set_route(self, r: Request, route: str) -> None:
        """The router decided: keep only the KV slots the route needs."""
        r.route, r.phase = route, Phase.ROUTED
        keep = models_of(route)
        self.kv.free({m: s for m, s in r.slots.items() if m not in keep})
        r.slots = {m: s for m, s in r.slots.items() if m in keep}

    def finish(self, r: Request, reason: str) -> None:
        r.phase, r.finish_reason = Phase.FINISHED, reason
        if r in self.running:
            self.running.remove(r)
        else:
            try:
                self.waiting.remove(r)
            except ValueError:
                pass
        self.kv.free(r.slots)
        r.slots = {}
