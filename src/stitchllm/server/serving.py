"""OpenAI-style handlers for completions and chat completions, given an engine client (no HTTP here).

Logprobs: completions' `logprobs: N` and chat's `logprobs: true, top_logprobs: N` (N in 0..20) return the route's
raw log-probabilities (engine/logprobs.py) of each token, with the N most likely alternatives; completions with
`echo` add the prompt's tokens (the first one's logprob null), and `echo` with `max_tokens: 0` only scores the
prompt (lm-evaluation-harness's log-likelihood requests). Streams carry them too: each chunk holds the logprobs of
the tokens it brings (a token whose text is held back, for a stop string or half a character, goes with the chunk
that sends it). `n` must be 1: one choice per request, asked for by a 400 that says so.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from stitchllm.engine.async_engine import AsyncEngine
from stitchllm.engine.request import RequestOutput
from stitchllm.errors import StitchError
from stitchllm.sampling import MAX_LOGPROBS, SamplingParams
from stitchllm.server.logprobs import CompletionLogprobs, TokenTexts, chat_logprobs
from stitchllm.server.metrics import ServerMetrics
from stitchllm.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields, new_id, now
from stitchllm.server.text import TextTracker

AUTO = "auto"


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
        self.token_texts = TokenTexts(tokenizer)
        self.route_names, self.max_model_len = route_names, max_model_len

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "stitchllm"}
                                           for name in [AUTO, *self.route_names]]}

    # ---- request -> engine ---------------------------------------------------------------------

    def _prepare(self, req: SamplingFields, prompt_ids: list[int], logprobs: int | None = None,
                 prompt_logprobs: int | None = None) -> Generation:
        if req.model != AUTO and req.model not in self.route_names:
            raise StitchError(f"model {req.model!r} does not exist; available: {', '.join([AUTO, *self.route_names])}")
        if req.n != 1:
            raise StitchError(f"n={req.n} is not supported: one choice per request (send n=1, or several requests)")
        if not prompt_ids:
            raise StitchError("prompt is empty")
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise StitchError(f"prompt is {len(prompt_ids)} tokens; the context length is {self.max_model_len}")
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if max_tokens is not None and max_tokens < (0 if prompt_logprobs is not None else 1):
            raise StitchError(f"max_tokens must be at least 1, got {max_tokens} (0 only scores the prompt: "
                              "a completion with echo=true and logprobs)")
        if max_tokens is not None and max_tokens > room:
            raise StitchError(f"max_tokens={max_tokens} exceeds the {room} tokens left in the context "
                              f"({len(prompt_ids)} prompt tokens of {self.max_model_len})")
        params = SamplingParams(max_tokens=room if max_tokens is None else max_tokens, temperature=req.temperature,
                                top_p=req.top_p, top_k=req.top_k, seed=req.seed,
                                stop_token_ids=list(req.stop_token_ids or []), ignore_eos=req.ignore_eos,
                                logprobs=logprobs, prompt_logprobs=prompt_logprobs)
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        return Generation(prompt_ids, params, None if req.model == AUTO else req.model, stops)

    def completion_prompt(self, req: CompletionRequest) -> list[int]:
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and not all(isinstance(t, int) for t in prompt):  # a batch
            if len(prompt) != 1:
                raise StitchError("batched prompts are not supported; send one prompt per request")
            prompt = prompt[0]
        if not prompt:
            raise StitchError("prompt is empty")
        if isinstance(prompt, list):  # token ids
            return list(prompt)
        return self.tokenizer(prompt, add_special_tokens=True)["input_ids"]

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
        n = _top_n("logprobs", req.logprobs)
        return self._prepare(req, self.completion_prompt(req), logprobs=n, prompt_logprobs=n if req.echo else None)

    def prepare_chat(self, req: ChatCompletionRequest) -> Generation:
        n = _top_n("top_logprobs", req.top_logprobs)
        if n is not None and not req.logprobs:
            raise StitchError("top_logprobs needs logprobs=true")
        return self._prepare(req, self.chat_prompt(req), logprobs=(n or 0) if req.logprobs else None)

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


def _top_n(field: str, n: int | None) -> int | None:
    if n is not None and not 0 <= n <= MAX_LOGPROBS:
        raise StitchError(f"{field} must be between 0 and {MAX_LOGPROBS}, got {n}")
    return n


def finish_reason(out: RequestOutput, tracker: TextTracker) -> str:
    return "stop" if tracker.stopped else ("length" if out.finish_reason == "length" else "stop")


def usage(gen: Generation, tracker: TextTracker) -> dict:
    n = len(tracker.ids)
    return {"prompt_tokens": len(gen.prompt_ids), "completion_tokens": n, "total_tokens": len(gen.prompt_ids) + n}


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def echoed_prompt(serving: OpenAIServing, gen: Generation) -> str:
    return serving.tokenizer.decode(gen.prompt_ids, skip_special_tokens=True)


async def completion_body(serving: OpenAIServing, req: CompletionRequest, gen: Generation) -> tuple[dict, str | None]:
    """Run to the end; the full (non-streaming) completion response and its route."""
    text, out, tracker, entries, prompt_entries = "", None, None, [], None
    async for delta, out, tracker in serving.run(gen):
        text += delta
        entries += out.logprobs or []
        prompt_entries = out.prompt_logprobs or prompt_entries
    logprobs = None
    if req.logprobs is not None:
        ids, lps = (list(gen.prompt_ids), list(prompt_entries)) if req.echo else ([], [])
        logprobs = CompletionLogprobs(serving.token_texts)(ids + [e.token_id for e in entries], lps + entries)
    choice = {"index": 0, "text": (echoed_prompt(serving, gen) if req.echo else "") + text,
              "finish_reason": finish_reason(out, tracker), "logprobs": logprobs}
    return ({"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": req.model,
             "route": out.route, "choices": [choice], "usage": usage(gen, tracker)}, out.route)


async def chat_body(serving: OpenAIServing, req: ChatCompletionRequest, gen: Generation) -> tuple[dict, str | None]:
    text, out, tracker, entries = "", None, None, []
    async for delta, out, tracker in serving.run(gen):
        text += delta
        entries += out.logprobs or []
    choice = {"index": 0, "message": {"role": "assistant", "content": text},
              "finish_reason": finish_reason(out, tracker),
              "logprobs": chat_logprobs(serving.token_texts, entries) if req.logprobs else None}
    return ({"id": new_id("chatcmpl"), "object": "chat.completion", "created": now(), "model": req.model,
             "route": out.route, "choices": [choice], "usage": usage(gen, tracker)}, out.route)


async def stream_events(serving: OpenAIServing, req: SamplingFields, gen: Generation, chat: bool):
    """(route, SSE iterator): waits for the first output, so the route is known before headers are sent."""
    rid, created = new_id("chatcmpl" if chat else "cmpl"), now()
    obj = "chat.completion.chunk" if chat else "text_completion"
    steps = serving.run(gen)
    first = await steps.__anext__()
    route = first[1].route
    completion_logprobs = CompletionLogprobs(serving.token_texts)  # its text offsets run on through the stream

    def shown(token_ids: list[int], entries: list) -> dict | None:
        if gen.params.logprobs is None or not entries:
            return None
        return chat_logprobs(serving.token_texts, entries) if chat else completion_logprobs(token_ids, entries)

    def chunk(delta: str | None, reason: str | None, role: bool = False, logprobs: dict | None = None) -> dict:
        if chat:
            d = {"role": "assistant", "content": ""} if role else ({"content": delta} if delta else {})
            choice = {"index": 0, "delta": d, "finish_reason": reason, "logprobs": logprobs}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": reason, "logprobs": logprobs}
        return {"id": rid, "object": obj, "created": created, "model": req.model, "route": route, "choices": [choice]}

    async def events():
        try:
            if chat:
                yield sse(chunk(None, None, role=True))
            elif req.echo:  # the prompt comes first, with its logprobs when asked
                yield sse(chunk(echoed_prompt(serving, gen), None,
                                logprobs=shown(gen.prompt_ids, first[1].prompt_logprobs or [])))
            item, pending = first, []  # pending: logprobs of tokens whose text has not been sent yet
            while True:
                delta, out, tracker = item
                pending += out.logprobs or []
                done = out.finished or tracker.stopped
                if delta or done:
                    logprobs = shown([e.token_id for e in pending], pending)
                    yield sse(chunk(delta, finish_reason(out, tracker) if done else None, logprobs=logprobs))
                    pending = []
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
