"""Drive an in-process engine: open loop (Poisson arrivals) or closed loop (fixed concurrency)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from stitchllm.bench.workload import BenchRequest
from stitchllm.engine.llm_engine import LLMEngine
from stitchllm.sampling import SamplingParams


@dataclass
class Record:
    """Timeline of one served request."""

    request: BenchRequest
    arrival: float
    token_times: list[float] = field(default_factory=list)  # when each output arrived (a token, or an HTTP chunk)
    route: str | None = None
    output_tokens: int | None = None  # the server's count, when outputs are chunks of text rather than tokens
    error: str | None = None  # why the request failed (HTTP only); a failed request counts as not served
    output_ids: list[int] = field(default_factory=list)  # what it generated (in-process engine only)

    @property
    def num_tokens(self) -> int:
        return len(self.token_times) if self.output_tokens is None else self.output_tokens

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.arrival

    @property
    def tpot(self) -> float:
        n = self.num_tokens
        return (self.token_times[-1] - self.token_times[0]) / (n - 1) if n > 1 else 0.0

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:])]

    @property
    def e2e(self) -> float:
        return self.token_times[-1] - self.arrival


# makes a watch for one request: `add(new token ids) -> True` once its answer is complete (eval/humaneval.py)
WatchFactory = Callable[[], object]


def _params(output_tokens: int, watch: WatchFactory | None) -> SamplingParams:
    """Exactly `output_tokens` each (EOS ignored) for the text workload; with a watch, requests end at EOS or
    when their answer is complete, `output_tokens` being the cap."""
    return SamplingParams(max_tokens=output_tokens, ignore_eos=watch is None)


def _drain(engine: LLMEngine, records: dict[str, Record], open_ids: set[str], watches: dict | None = None) -> None:
    for out in engine.step():
        rec = records[out.request_id]
        rec.token_times.extend([time.perf_counter()] * len(out.new_token_ids))
        rec.output_ids.extend(out.new_token_ids)
        rec.route = out.route
        done = out.finished
        if not done and watches is not None and watches[out.request_id].add(out.new_token_ids):
            engine.abort(out.request_id)  # its answer is complete: a stop string, as the server stops one
            done = True
        if done:
            open_ids.discard(out.request_id)
            if watches is not None:
                del watches[out.request_id]


def run_open_loop(engine: LLMEngine, requests: list[BenchRequest], arrivals: list[float], output_tokens: int,
                  watch: WatchFactory | None = None) -> tuple[list[Record], float]:
    """Submit request i at arrivals[i]; run until all finish. Returns the records and the wall time."""
    params = _params(output_tokens, watch)
    watches = {} if watch is not None else None
    records: dict[str, Record] = {}
    open_ids: set[str] = set()
    start = time.perf_counter()
    nxt = 0
    while nxt < len(arrivals) or open_ids:
        now = time.perf_counter() - start
        while nxt < len(arrivals) and arrivals[nxt] <= now:
            req = requests[nxt % len(requests)]
            rid = f"p{nxt}"
            records[rid] = Record(req, start + arrivals[nxt])
            engine.add_request(rid, req.prompt, params)
            open_ids.add(rid)
            if watches is not None:
                watches[rid] = watch()
            nxt += 1
        if open_ids:
            _drain(engine, records, open_ids, watches)
        else:
            time.sleep(min(0.01, max(0.0, arrivals[nxt] - now)))
    return list(records.values()), time.perf_counter() - start


def run_closed_loop(engine: LLMEngine, requests: list[BenchRequest], concurrency: int, duration: float,
                    output_tokens: int, watch: WatchFactory | None = None,
                    max_requests: int | None = None) -> tuple[list[Record], float]:
    """Keep `concurrency` requests in flight for `duration` seconds, or until `max_requests` were sent (then let
    them finish); saturation."""
    params = _params(output_tokens, watch)
    watches = {} if watch is not None else None
    records: dict[str, Record] = {}
    open_ids: set[str] = set()
    start = time.perf_counter()
    sent = 0

    def sending() -> bool:
        return time.perf_counter() - start < duration and (max_requests is None or sent < max_requests)

    while sending() or open_ids:
        while len(open_ids) < concurrency and sending():
            req = requests[sent % len(requests)]
            rid = f"c{sent}"
            records[rid] = Record(req, time.perf_counter())
            engine.add_request(rid, req.prompt, params)
            open_ids.add(rid)
            if watches is not None:
                watches[rid] = watch()
            sent += 1
        _drain(engine, records, open_ids, watches)
    return list(records.values()), time.perf_counter() - start
