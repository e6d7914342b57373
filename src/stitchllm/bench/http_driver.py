"""Drive a running OpenAI-compatible server over HTTP: the open and closed loops of driver.py, streamed.

Each request is a streamed `/v1/completions` call with the prompt as token ids, greedy, EOS ignored, and the
usage chunk requested: TTFT is the first text chunk, TPOT uses the server's token count (a chunk may hold
more than one token, or none while a character is incomplete), ITL the gaps between chunks — as vLLM's
`benchmark_serving` measures a server. The route comes from the `route` field StitchLLM adds to every chunk.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from stitchllm.bench.driver import Record
from stitchllm.bench.workload import BenchRequest
from stitchllm.errors import StitchError

# A request may wait minutes in an overloaded server's queue; only a server that stops answering fails it.
_TIMEOUT = httpx.Timeout(600.0, connect=10.0)


class ServerTarget:
    """A server at `url` (without /v1); a policy is one of its models: `auto` (its own policy) or a route."""

    def __init__(self, url: str, api_key: str | None = None):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.models = self._models()

    def _models(self) -> list[str]:
        try:
            resp = httpx.get(f"{self.url}/v1/models", headers=self.headers, timeout=_TIMEOUT)
        except httpx.HTTPError as exc:
            raise StitchError(f"cannot reach the server at {self.url}: {exc}") from None
        if resp.status_code == 401:
            raise StitchError(f"{self.url} refused the API key (401): pass --api-key or set STITCHLLM_API_KEY")
        if resp.status_code != 200:
            raise StitchError(f"{self.url}/v1/models answered HTTP {resp.status_code}")
        return [m["id"] for m in resp.json()["data"]]

    def model_for(self, policy: str) -> str:
        name = policy.removeprefix("fixed:")
        if name not in self.models:
            raise StitchError(f"policy {policy!r}: with --url a policy is one of the server's models "
                              f"({', '.join(self.models)}); start the server with --policy P to measure P as 'auto'")
        return name

    def open_loop(self, policy: str, requests: list[BenchRequest], arrivals: list[float], output_tokens: int,
                  ) -> tuple[list[Record], float]:
        return asyncio.run(self._open_loop(self.model_for(policy), requests, arrivals, output_tokens))

    def closed_loop(self, policy: str, requests: list[BenchRequest], concurrency: int, duration: float,
                    output_tokens: int, max_requests: int | None = None) -> tuple[list[Record], float]:
        return asyncio.run(self._closed_loop(self.model_for(policy), requests, concurrency, duration, output_tokens,
                                             max_requests))

    def _client(self, concurrency: int | None = None) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=_TIMEOUT, limits=limits)

    async def _open_loop(self, model, requests, arrivals, output_tokens):
        records: list[Record] = []
        async with self._client() as client:
            start = time.perf_counter()

            async def arrive(i: int, at: float) -> None:
                await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
                rec = Record(requests[i % len(requests)], start + at)
                records.append(rec)
                await _stream(client, model, rec, output_tokens)

            await asyncio.gather(*(arrive(i, at) for i, at in enumerate(arrivals)))
        return records, time.perf_counter() - start

    async def _closed_loop(self, model, requests, concurrency, duration, output_tokens, max_requests):
        records: list[Record] = []
        async with self._client(concurrency) as client:
            start = time.perf_counter()

            async def user() -> None:  # one of `concurrency` clients, each sending its next request on completion
                while time.perf_counter() - start < duration and (max_requests is None or len(records) < max_requests):
                    rec = Record(requests[len(records) % len(requests)], time.perf_counter())
                    records.append(rec)
                    await _stream(client, model, rec, output_tokens)

            await asyncio.gather(*(user() for _ in range(concurrency)))
        return records, time.perf_counter() - start


async def _stream(client: httpx.AsyncClient, model: str, rec: Record, output_tokens: int) -> None:
    """One streamed completion into `rec`; failures are recorded on it, never raised."""
    body = {"model": model, "prompt": rec.request.prompt, "max_tokens": output_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    try:
        async with client.stream("POST", "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                rec.error = f"HTTP {resp.status_code}: {(await resp.aread()).decode(errors='replace')[:200]}"
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                rec.route = chunk.get("route", rec.route)
                if chunk["choices"]:
                    rec.token_times.append(time.perf_counter())
                if chunk.get("usage"):
                    rec.output_tokens = chunk["usage"]["completion_tokens"]
    except httpx.HTTPError as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
    if rec.error is None and (not rec.token_times or rec.output_tokens is None):
        rec.error = "the stream ended without output or usage"
