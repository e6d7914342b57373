"""OpenAI-style handlers for completions and chat completions, given an engine client (no HTTP here)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tokenizers.decoders import DecodeStream

from stitchllm.engine.async_engine import AsyncEngine
from stitchllm.engine.request import RequestOutput
from stitchllm.errors import StitchError
from stitchllm.sampling import SamplingParams
from stitchllm.server.metrics import ServerMetrics
from stitchllm.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields, new_id, now

AUTO = "auto"


class TextTracker:
    """Incremental detokenisation with stop strings: returns only text that is final (no half characters,
    nothing that could still turn into a stop string).

    Each token is decoded once (the tokenizers library's DecodeStream, which holds back partial UTF-8): decoding
    the whole output again for every token cost O(n^2) on the event loop that every stream shares. A tokenizer
    without a Rust backend falls back to that whole-output decode."""

    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer, self.stops = tokenizer, [s for s in stops if s]
        self.ids: list[int] = []
        self.emitted = 0
        self.text = ""  # the output decoded so far, cut at a stop string once one appears
        self.stopped = False
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._stream = DecodeStream(skip_special_tokens=True) if self._backend is not None else None

    def _decode(self, token_ids: list[int], finished: bool) -> str:
        """The output decoded so far; while unfinished, without a character still split across tokens."""
        if self._stream is not None:  # DecodeStream holds partial characters back itself
            return self.text + "".join(piece for t in token_ids if (piece := self._stream.step(self._backend, t)))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return text if finished else text.rstrip("\ufffd")

    def add(self, token_ids: list[int], finished: bool) -> str:
        self.ids.extend(token_ids)
        text = self._decode(token_ids, finished)
        for stop in self.stops:
            at = text.find(stop, max(0, len(self.text) - len(stop) + 1))  # earlier text was searched already
            if at >= 0:
                text, finished, self.stopped = text[:at], True, True
        self.text = text
        if not finished:
            hold = max((len(s) - 1 for s in self.stops), default=0)
            text = text[: max(self.emitted, len(text) - hold)]
        delta = text[self.emitted:]
        self.emitted += len(delta)
        return delta


@dataclass
class Generation:
    """One request as the HTTP layer sees it."""

    prompt_ids: list[int]
    params: SamplingParams
    route: str | None
    stops: list[str]


class OpenAIServing:
    """Turns validated OpenAI requests into engine requests and engine outputs into OpenAI responses."""

    def __init__(self, engine: AsyncEngine, tokenizer, route_names: list[str], max_model_len: int,
                 metrics: ServerMetrics):
        self.engine, self.tokenizer, self.metrics = engine, tokenizer, metrics
        self.route_names, self.max_model_len = route_names, max_model_len

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "stitchllm"}
                                           for name in [AUTO, *self.route_names]]}

    # ---- request -> engine ---------------------------------------------------------------------

    def _prepare(self, req: SamplingFields, prompt_ids: list[int]) -> Generation:
        if req.model != AUTO and req.model not in self.route_names:
            raise StitchError(f"model {req.model!r} does not exist; available: {', '.join([AUTO, *self.route_names])}")
        if req.n != 1:
            raise StitchError("only n=1 is supported")
        if not prompt_ids:
            raise StitchError("prompt is empty")
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise StitchError(f"prompt is {len(prompt_ids)} tokens; the context length is {self.max_model_len}")
        max_tokens = req.max_completion_tokens or req.max_tokens
        if max_tokens is not None and max_tokens < 1:
            raise StitchError(f"max_tokens must be at least 1, got {max_tokens}")
        if max_tokens is not None and max_tokens > room:
            raise StitchError(f"max_tokens={max_tokens} exceeds the {room} tokens left in the context "
                              f"({len(prompt_ids)} prompt tokens of {self.max_model_len})")
        params = SamplingParams(max_tokens=max_tokens or room, temperature=req.temperature, top_p=req.top_p,
                                top_k=req.top_k, seed=req.seed, stop_token_ids=list(req.stop_token_ids or []),
                                ignore_eos=req.ignore_eos)
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        return Generation(prompt_ids, params, None if req.model == AUTO else req.model, stops)

    def completion_prompt(self, req: CompletionRequest) -> list[int]:
        if isinstance(req.prompt, list) and req.prompt and all(isinstance(t, int) for t in req.prompt):
            return list(req.prompt)
        if isinstance(req.prompt, list):
            if len(req.prompt) != 1:
                raise StitchError("batched prompts are not supported; send one prompt per request")
            text = req.prompt[0]
        else:
            text = req.prompt
        if not isinstance(text, str) or not text:
            raise StitchError("prompt is empty")
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def chat_prompt(self, req: ChatCompletionRequest) -> list[int]:
        messages = []
        for m in req.messages:
            content = m.content
            if isinstance(content, list):  # content parts: keep the text ones
                content = "".join(p.get("text", "") for p in content if p.get("type") == "text")
            messages.append({"role": "system" if m.role == "developer" else m.role, "content": content or ""})
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def prepare_completion(self, req: CompletionRequest) -> Generation:
        return self._prepare(req, self.completion_prompt(req))

    def prepare_chat(self, req: ChatCompletionRequest) -> Generation:
        return self._prepare(req, self.chat_prompt(req))

    # ---- engine -> response ----------------------------------------------------------------------

    async def run(self, gen: Generation) -> AsyncIterator[tuple[str, RequestOutput, TextTracker]]:
        """Yield (text delta, engine output, tracker) per step; records metrics; stops at a stop string."""
        tracker = TextTracker(self.tokenizer, gen.stops)
        start = last = time.monotonic()
        out = None
        try:
            async for out in self.engine.generate(gen.prompt_ids, gen.params, gen.route):
                t = time.monotonic()
                if len(tracker.ids) == 0:
                    self.metrics.ttft.observe(t - start)
                else:
                    self.metrics.itl.observe(t - last)
                last = t
                self.metrics.generation_tokens.inc(len(out.new_token_ids))
                delta = tracker.add(out.new_token_ids, out.finished)
                yield delta, out, tracker
                if tracker.stopped:
                    break  # leaving the engine stream aborts the request
        finally:  # also when a stream is closed after its last chunk, or its client went away
            if out is not None:
                self.metrics.prompt_tokens.inc(len(gen.prompt_ids))
                done = out.finished or tracker.stopped
                reason = ("stop" if tracker.stopped else out.finish_reason or "stop") if done else "abort"
                self.metrics.requests.labels(route=out.route or "none", finish_reason=reason).inc()
                self.metrics.e2e.observe(time.monotonic() - start)


def finish_reason(out: RequestOutput, tracker: TextTracker) -> str:
    return "stop" if tracker.stopped else ("length" if out.finish_reason == "length" else "stop")


def usage(gen: Generation, tracker: TextTracker) -> dict:
    n = len(tracker.ids)
    return {"prompt_tokens": len(gen.prompt_ids), "completion_tokens": n, "total_tokens": len(gen.prompt_ids) + n}


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def completion_body(serving: OpenAIServing, req: CompletionRequest, gen: Generation) -> tuple[dict, str | None]:
    """Run to the end; the full (non-streaming) completion response and its route."""
    text, out, tracker = "", None, None
    async for delta, out, tracker in serving.run(gen):
        text += delta
    choice = {"index": 0, "text": (tracker.tokenizer.decode(gen.prompt_ids, skip_special_tokens=True) if req.echo else "")
              + text, "finish_reason": finish_reason(out, tracker), "logprobs": None}
    return ({"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": req.model,
             "route": out.route, "choices": [choice], "usage": usage(gen, tracker)}, out.route)


async def chat_body(serving: OpenAIServing, req: ChatCompletionRequest, gen: Generation) -> tuple[dict, str | None]:
    text, out, tracker = "", None, None
    async for delta, out, tracker in serving.run(gen):
        text += delta
    choice = {"index": 0, "message": {"role": "assistant", "content": text},
              "finish_reason": finish_reason(out, tracker), "logprobs": None}
    return ({"id": new_id("chatcmpl"), "object": "chat.completion", "created": now(), "model": req.model,
             "route": out.route, "choices": [choice], "usage": usage(gen, tracker)}, out.route)


async def stream_events(serving: OpenAIServing, req: SamplingFields, gen: Generation, chat: bool):
    """(route, SSE iterator): waits for the first output, so the route is known before headers are sent."""
    rid, created = new_id("chatcmpl" if chat else "cmpl"), now()
    obj = "chat.completion.chunk" if chat else "text_completion"
    steps = serving.run(gen)
    first = await steps.__anext__()
    route = first[1].route

    def chunk(delta: str | None, reason: str | None, role: bool = False) -> dict:
        if chat:
            d = {"role": "assistant", "content": ""} if role else ({"content": delta} if delta else {})
            choice = {"index": 0, "delta": d, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": reason, "logprobs": None}
        return {"id": rid, "object": obj, "created": created, "model": req.model, "route": route, "choices": [choice]}

    async def events():
        try:
            if chat:
                yield sse(chunk(None, None, role=True))
            item = first
            while True:
                delta, out, tracker = item
                done = out.finished or tracker.stopped
                if delta or done:
                    yield sse(chunk(delta, finish_reason(out, tracker) if done else None))
                if done:
                    break
                try:
                    item = await steps.__anext__()
                except StopAsyncIteration:
                    break
            if req.stream_options and req.stream_options.include_usage:
                yield sse({"id": rid, "object": obj, "created": created, "model": req.model, "route": route,
                           "choices": [], "usage": usage(gen, tracker)})
            yield sse("[DONE]")
        finally:
            await steps.aclose()  # a client gone mid-stream lands here: the request is aborted, its cache freed

    return route, events()
