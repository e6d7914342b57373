"""Prometheus metrics of one server (own registry: two apps in one process never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)


class ServerMetrics:
    """Request and token counters, latency histograms, and engine gauges refreshed at each scrape."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.running = Gauge("stitchllm_num_requests_running", "Requests being computed", registry=r)
        self.waiting = Gauge("stitchllm_num_requests_waiting", "Requests waiting for KV cache", registry=r)
        self.kv_usage = Gauge("stitchllm_kv_cache_usage_perc", "Fraction of KV-cache slots in use", registry=r)
        self.target_cost = Gauge("stitchllm_target_cost", "Load controller's target average route cost", registry=r)
        self.demand = Gauge("stitchllm_demand_tokens_per_second", "Tokens arriving per second (prompt + expected "
                            "output), as the load controller plans with", registry=r)
        self.prompt_tokens = Counter("stitchllm_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("stitchllm_generation_tokens", "Tokens generated", registry=r)
        self.requests = Counter("stitchllm_requests", "Finished requests per route", ["route", "finish_reason"],
                                registry=r)
        self.ttft = Histogram("stitchllm_time_to_first_token_seconds", "Time to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("stitchllm_inter_token_latency_seconds", "Time between output tokens",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("stitchllm_e2e_request_latency_seconds", "End-to-end request latency",
                             buckets=LATENCY_BUCKETS, registry=r)

    def refresh(self, stats: dict) -> None:
        self.running.set(stats["running"])
        self.waiting.set(stats["waiting"])
        self.kv_usage.set(stats["kv_usage"])
        self.target_cost.set(stats["target_cost"])
        self.demand.set(stats["demand_tok_s"])
