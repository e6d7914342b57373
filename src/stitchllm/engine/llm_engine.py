"""LLMEngine: the step loop (schedule -> run -> postprocess), route choice at admission, load control."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import torch

from stitchllm.engine.config import EngineConfig
from stitchllm.engine.demand import DemandMeter
from stitchllm.engine.kv_manager import KVCacheManager
from stitchllm.engine.latency_window import LatencyWindow
from stitchllm.engine.request import Phase, Request, RequestOutput
from stitchllm.engine.runner import ModelRunner
from stitchllm.engine.scheduler import Scheduler
from stitchllm.engine.step_time import StepTimeModel, StepTimes
from stitchllm.engine.warmup import profile_step_time
from stitchllm.engine.work import WorkItem
from stitchllm.errors import StitchError
from stitchllm.models.int_dot import tile_rows
from stitchllm.models.kv_cache import KVCache
from stitchllm.models.linear import dtype_name, resolve_matmul_dtype
from stitchllm.models.quantized import resolve_weight_format
from stitchllm.routing.catalog import RouteCatalog
from stitchllm.routing.controller import LoadController, LoadSignal, StepCosts
from stitchllm.routing.dataset import shared_blocks
from stitchllm.routing.policies import RoutingBatch, make_policy
from stitchllm.routing.router_model import RouterMLP
from stitchllm.sampling import SamplingParams

ADAPTIVE = "auto"


def slots_for_budget(catalog: RouteCatalog, config: EngineConfig) -> dict[str, int]:
    """Slots per model: as many sequences as the KV budget holds (a slot in each model per sequence), at most
    max_num_seqs (more could never be used); without a budget, max_num_seqs. KV caches are allocated up front."""
    if config.kv_budget_mb is None:
        return {"large": config.max_num_seqs, "small": config.max_num_seqs}
    per_seq = sum(KVCache.bytes_per_token(m.config, m.config.num_layers) * config.max_model_len
                  for m in (catalog.family.large, catalog.family.small))
    n = min(int(config.kv_budget_mb * 2**20 // per_seq), config.max_num_seqs)
    if n < 1:
        raise StitchError(f"kv budget {config.kv_budget_mb} MB holds no sequence of {config.max_model_len} tokens")
    return {"large": n, "small": n}


class LLMEngine:
    """Continuous batching over a family's routes. Not thread-safe: one thread drives `step()`."""

    def __init__(self, catalog: RouteCatalog, config: EngineConfig, router: RouterMLP | None = None,
                 thresholds: dict[str, list[list[float]]] | None = None):
        self.catalog, self.config = catalog, config
        matmul_dtype = resolve_matmul_dtype(config.matmul_dtype)
        catalog.set_matmul_dtype(matmul_dtype, config.weights)
        self.matmul_dtype = dtype_name(matmul_dtype)
        self.weights = resolve_weight_format(config.weights, matmul_dtype)
        if self.weights == "gguf" and catalog.family.large.gguf_source is None:  # no GGUF file: loaded in fp32
            self.weights = "fp32"
        self.route_names = [r.name for r in catalog.routes]
        self.costs = [catalog.relative_cost(r) for r in catalog.routes]
        needs_router = config.policy in (ADAPTIVE, "router", "whole-model")
        if needs_router and router is None:
            raise StitchError(f"policy {config.policy!r} needs a trained router; run `stitchllm router train`")
        self.policy = make_policy("router" if config.policy == ADAPTIVE else config.policy)
        self.router, self.thresholds = router, thresholds or {}
        self.controller = LoadController(config.slo, cheapest_cost=self.costs[0])
        # fixed step time per regime, relative to an all-large step: it grows with the weights a step reads
        reads = {r.name: r.weight_bytes_per_step(catalog.configs, bytes_per_param=1) for r in catalog.routes}
        self.reads_mixed = (reads["large"] + reads["small"]) / reads["large"]
        self.reads_cheapest = reads[self.route_names[0]] / reads["large"]
        switch_rows = tile_rows() if self.weights == "gguf" else None  # where a step's kernels change
        self.demand, self.step_time = DemandMeter(), StepTimes(reads["large"], switch_rows)
        self.kv = KVCacheManager(slots_for_budget(catalog, config))
        self.scheduler = Scheduler(config, self.kv)
        # prompts the router routes first run the large model's blocks its features come from (the bottom pass)
        bottom = router.feature_block if router is not None else shared_blocks(catalog)
        self.runner = ModelRunner(catalog, router, self.kv.capacity, config.max_model_len, bottom)
        large = catalog.family.large.config
        self.bottom_cost = bottom * large.block_flops_per_token / large.flops_per_token
        self.requests: dict[str, Request] = {}
        self.route_counts: Counter[str] = Counter()
        self.recent_ttft, self.recent_tpot = LatencyWindow(), LatencyWindow()
        self.eos_ids = {catalog.family.tokenizer.eos_token_id}
        self._rng = torch.Generator().manual_seed(config.seed)
        if config.policy == ADAPTIVE:  # only the load controller reads the step-time model
            profile_step_time(self.runner, self.step_time, self.kv.capacity["large"],
                              min(config.max_num_batched_tokens, config.max_model_len - 1), next(iter(self.eos_ids)))

    # ---- requests --------------------------------------------------------------------------------

    def validate(self, prompt_ids: list[int], route: str | None) -> None:
        """Refuse what can never run: an empty prompt, one with no room to generate, an unknown route."""
        if not prompt_ids:
            raise StitchError("prompt is empty")
        if len(prompt_ids) + 1 > self.config.max_model_len:
            raise StitchError(f"prompt is {len(prompt_ids)} tokens; max_model_len is {self.config.max_model_len}")
        if route is not None and route not in self.route_names:
            raise StitchError(f"unknown route {route!r}; available: {', '.join(self.route_names)}")

    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams, route: str | None = None) -> None:
        """Queue a request; `route` pins it (a route name), None lets the policy choose."""
        self.validate(prompt_ids, route)
        if route is None and self.config.policy.startswith("fixed:"):
            route = self.config.policy.split(":", 1)[1]
        if route is None and self.config.policy == "random":
            route = self.route_names[int(self.policy.choose(self._batch(None), self._knob()))]
        r = Request(request_id, list(prompt_ids), params, route=route, pinned=route is not None)
        self.requests[request_id] = r
        if not self.has_unfinished():  # the engine ran empty: whatever load was measured has been served
            self.controller.forget_feedback()
            self.demand.forget_arrivals()
        room = self.config.max_model_len - len(prompt_ids)
        self.demand.arrive(time.monotonic(), len(prompt_ids), min(params.max_tokens, room))
        self.scheduler.add(r)

    def abort(self, request_id: str) -> None:
        r = self.requests.get(request_id)
        if r is not None and not r.is_finished:
            self._finish(r, "abort")

    def has_unfinished(self) -> bool:
        return bool(self.scheduler.waiting or self.scheduler.running)

    # ---- the step ---------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        self._route_queue_at_floor()
        items = self.scheduler.schedule()
        if not items:
            return []
        started = time.monotonic()
        result = self.runner.run(items)
        now = time.monotonic()
        rows = sum(len(it.token_ids) for it in items)
        self.step_time.observe(rows, result.params_read, sum(self._work(it) for it in items), now - started)
        self._update_controller(now)  # before routing: a burst admitted in this step is routed for its own load
        outputs = []
        for it in items:
            r = self.requests[it.request_id]
            if r.is_finished:
                continue
            if it.kind == "bottom":
                r.bottom_done += len(it.token_ids)
                if it.last_chunk:
                    self._choose_route(r, result.predicted_loss[r.request_id])
                continue
            if it.kind == "routed":
                r.phase = Phase.DECODE
                r.first_token_at = now
                self.recent_ttft.add(now, (now - r.arrival) * 1000)
                self.route_counts[r.route] += 1
            else:  # the request's TPOT so far, as the SLO measures it: a prefill-heavy step's long gap is one of many
                self.recent_tpot.add(now, (now - r.first_token_at) * 1000 / len(r.output_ids))
            prompt_logprobs = result.prompt_logprobs.get(r.request_id)
            if r.params.max_tokens == 0:  # it only scored its prompt: nothing to generate
                self._finish(r, "length")
                outputs.append(RequestOutput(r.request_id, [], True, "length", r.route, r.prompt_len, 0,
                                             prompt_logprobs=prompt_logprobs))
                continue
            token = result.sampled[r.request_id]
            r.output_ids.append(token)
            reason = self._stop_reason(r, token)
            if reason:
                self._finish(r, reason)
            logprobs = result.logprobs.get(r.request_id)
            outputs.append(RequestOutput(r.request_id, [token], r.is_finished, r.finish_reason, r.route,
                                         r.prompt_len, len(r.output_ids), None if logprobs is None else [logprobs],
                                         prompt_logprobs))
        return outputs

    def _stop_reason(self, r: Request, token: int) -> str | None:
        p = r.params
        if (token in self.eos_ids and not p.ignore_eos) or token in p.stop_token_ids:
            return "stop"
        if len(r.output_ids) >= p.max_tokens or r.num_tokens >= self.config.max_model_len:
            return "length"
        return None

    def _work(self, item: WorkItem) -> float:
        """The item's tokens weighted by the fraction of the large model they run through."""
        if item.kind == "bottom":
            return len(item.token_ids) * self.bottom_cost
        cost = self.costs[self.route_names.index(item.route)]
        return len(item.token_ids) * (cost - self.bottom_cost if item.from_bottom else cost)

    def _finish(self, r: Request, reason: str) -> None:
        if reason != "abort":
            self.demand.finished(len(r.output_ids))
        self.scheduler.finish(r, reason)
        self.runner.release(r.request_id)

    # ---- routing ------------------------------------------------------------------------------------

    def _batch(self, predicted: list[float] | None) -> RoutingBatch:
        pred = None if predicted is None else torch.tensor([predicted])
        return RoutingBatch(self.route_names, self.costs, predicted_loss=pred, generator=self._rng)

    def _knob(self) -> float:
        """The policy's operating point: from the controller's target cost (auto) or the static target."""
        target = self.controller.target_cost if self.config.policy == ADAPTIVE else self.config.static_cost
        if self.policy.name == "random":
            small_cost = self.costs[self.route_names.index("small")]
            return float(np.clip((1.0 - target) / (1.0 - small_cost), 0.0, 1.0))
        table = self.thresholds.get(self.policy.name)
        if not table:
            return 0.0
        costs, knobs = zip(*sorted(table))
        return float(np.interp(target, costs, knobs))

    def _choose_route(self, r: Request, predicted: list[float]) -> None:
        target = self.controller.target_cost
        if self.config.policy == ADAPTIVE and target >= 1.0:
            route = "large"  # light load: everyone gets the full large model
        elif self.config.policy == ADAPTIVE and target <= self.costs[0]:
            route = self.route_names[0]  # overload: everyone takes the cheapest route (mixing in a few costly
            # requests would keep a second model's weights streaming through every step)
        else:
            route = self.route_names[int(self.policy.choose(self._batch(predicted), self._knob())[0])]
        self.scheduler.set_route(r, route)

    def _route_queue_at_floor(self) -> None:
        """At the floor every request takes the cheapest route whatever the router says, so route the queue now
        and skip the bottom pass: it would read the large model's weights in every admission step, the fixed
        time the floor exists to avoid, and add a step to each request's time to first token."""
        if self.config.policy == ADAPTIVE and self.controller.target_cost <= self.costs[0]:
            for r in self.scheduler.waiting:
                if r.route is None:
                    r.route = self.route_names[0]

    def _update_controller(self, now: float) -> None:
        if self.config.policy != ADAPTIVE:
            return
        tpot_p90 = self.recent_tpot.p90(now)
        many, output_tok_s = self.step_time.many, self.demand.output_tokens_per_s(now)
        signal = LoadSignal(len(self.scheduler.waiting), self.recent_ttft.p90(now), tpot_p90,
                            max(self.demand.tokens_per_s(now), self._backlog_tok_s()),
                            output_tok_s, self._step_costs(self.step_time.few),
                            self._step_costs(many) if many else None, self.step_time.switch_rows or 0,
                            steerable=self._has_unpinned(), request_life_s=self._request_life_s(tpot_p90),
                            slot_step_s=self._slot_step_s(output_tok_s))
        self.controller.update(signal, now)

    def _step_costs(self, model: StepTimeModel) -> StepCosts | None:
        """One regime's step costs for the plan (None until its model has seen enough steps)."""
        per_read, per_token = model.fit()
        if per_token <= 0:
            return None
        return StepCosts(per_token, per_read, per_read * self.reads_mixed, per_read * self.reads_cheapest)

    def _slot_step_s(self, output_tok_s: float) -> float:
        """The step time at which the arriving requests would occupy every sequence slot: in flight = arrivals/s
        x output tokens each x step time, and the output tokens arriving per second are measured."""
        slots = min(self.config.max_num_seqs, self.kv.capacity["large"])
        return slots / output_tok_s if output_tok_s > 0 else 0.0

    def _request_life_s(self, tpot_p90_ms: float) -> float:
        """How long the running requests stay in the engine: their mean expected output x the TPOT p90."""
        running = self.scheduler.running
        if not running:
            return 0.0
        output = sum(self.demand.expected_output(r.params.max_tokens) for r in running) / len(running)
        return output * tpot_p90_ms / 1000

    def _has_unpinned(self) -> bool:
        """Whether any request in the engine is the policy's to route (the controller's feedback needs one)."""
        return any(not r.pinned for r in self.scheduler.waiting) or any(not r.pinned for r in self.scheduler.running)

    def _backlog_tok_s(self) -> float:
        """Work already queued (requests not yet routed) as a rate: it must be served within the TTFT target.
        Without it, a closed loop whose arrivals stop while its queue is long would read as no demand. One request
        is not a queue: counted, a lone chat request (~400 tokens of expected work over a 2 s TTFT target) read as
        more than `large` decodes on 2 cores, and every one after an idle spell went to the cheapest route."""
        unrouted = list(self.scheduler.waiting) + [r for r in self.scheduler.running if r.phase is Phase.BOTTOM]
        if len(unrouted) <= 1:
            return 0.0
        tokens = sum(r.prompt_len + self.demand.expected_output(r.params.max_tokens) for r in unrouted)
        return tokens / (self.config.slo.ttft_ms / 1000)

    # ---- observability ------------------------------------------------------------------------------

    def stats(self) -> dict:
        return {"running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting),
                "kv_usage": self.kv.usage(), "kv_slots_used": sum(self.kv.used().values()),
                "target_cost": self.controller.target_cost, "demand_tok_s": self.demand.tokens_per_s(time.monotonic()),
                "routes": dict(self.route_counts)}
