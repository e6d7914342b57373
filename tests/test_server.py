"""The OpenAI-compatible server, driven by the official `openai` client over real HTTP on 127.0.0.1."""

import asyncio
import json

import httpx
import openai
import pytest

from server_util import live_server
from stitchllm.engine.async_engine import AsyncEngine
from stitchllm.engine.config import EngineConfig
from stitchllm.engine.llm_engine import LLMEngine
from stitchllm.server.app import create_app

KEY = "test-key"


def make_app(tiny_catalog, api_key=KEY, **config):
    catalog, _, router, manifest = tiny_catalog
    engine = LLMEngine(catalog, EngineConfig(**({"max_model_len": 256, "policy": "auto"} | config)), router,
                       manifest["thresholds"])
    return create_app(AsyncEngine(engine), catalog.family.tokenizer, api_key), engine


@pytest.fixture(scope="module")
def server(tiny_catalog):
    app, engine = make_app(tiny_catalog)
    with live_server(app) as url:
        yield url, engine


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_models_lists_auto_and_every_route(client, tiny_catalog):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["auto"] + [r.name for r in tiny_catalog[0].routes]
    assert {"large", "small", "L2-S1", "L3-S1"} <= set(ids)


def test_completion_names_its_route_and_usage(client):
    raw = client.completions.with_raw_response.create(model="auto", prompt="The quick brown fox", max_tokens=5,
                                                      temperature=0, extra_body={"ignore_eos": True})
    body = raw.parse()
    assert raw.headers["x-stitchllm-route"] == body.model_extra["route"] == "large"  # light load: large model
    assert body.usage.completion_tokens == 5 and body.usage.prompt_tokens == 4
    assert body.usage.total_tokens == 9 and body.choices[0].finish_reason == "length"


def test_pinned_route(client):
    raw = client.completions.with_raw_response.create(model="L3-S1", prompt="Hello", max_tokens=3, temperature=0,
                                                      extra_body={"ignore_eos": True})
    assert raw.headers["x-stitchllm-route"] == "L3-S1" == raw.parse().model_extra["route"]


def test_chat_completion(client):
    resp = client.chat.completions.create(model="small", messages=[{"role": "user", "content": "Say hi"}],
                                          max_tokens=4, temperature=0, extra_body={"ignore_eos": True})
    assert resp.choices[0].message.role == "assistant" and resp.usage.completion_tokens == 4
    assert resp.model_extra["route"] == "small"


def test_streaming_chat_with_usage(client):
    stream = client.chat.completions.create(model="L2-S1", messages=[{"role": "user", "content": "Count"}],
                                            max_tokens=6, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert chunks[-2].choices[0].finish_reason == "length"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(model="L2-S1", messages=[{"role": "user", "content": "Count"}],
                                           max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    assert streamed == whole.choices[0].message.content


@pytest.mark.parametrize("kwargs, message", [
    ({"model": "gpt-4"}, "does not exist"),
    ({"max_tokens": 0}, "max_tokens must be at least 1"),
    ({"max_tokens": 100000}, "exceeds"),
    ({"temperature": 3.5}, "temperature must be in"),
    ({"prompt": "word " * 300}, "context length"),
    ({"max_tokens": "many"}, "max_tokens"),
])
def test_bad_requests_are_400(client, kwargs, message):
    args = {"model": "auto", "prompt": "hi", "max_tokens": 4} | kwargs
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(**args)
    assert err.value.status_code == 400 and message in err.value.message


def test_malformed_json_and_missing_key(server):
    url, _ = server
    r = httpx.post(url + "/v1/completions", content=b"{not json", headers={"Authorization": f"Bearer {KEY}",
                                                                          "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.post(url + "/v1/completions", json={"prompt": "hi"}).status_code == 401
    assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url + "/health").json() == {"status": "ok"}


def test_metrics_exposed(server, client):
    client.completions.create(model="small", prompt="metrics", max_tokens=2, extra_body={"ignore_eos": True})
    list(client.completions.create(model="L3-S1", prompt="streamed", max_tokens=2, stream=True,
                                   extra_body={"ignore_eos": True}))
    text = httpx.get(server[0] + "/metrics").text
    for name in ("stitchllm_num_requests_running", "stitchllm_num_requests_waiting", "stitchllm_kv_cache_usage_perc",
                 "stitchllm_prompt_tokens_total", "stitchllm_generation_tokens_total",
                 "stitchllm_time_to_first_token_seconds_bucket", "stitchllm_inter_token_latency_seconds_bucket",
                 "stitchllm_e2e_request_latency_seconds_bucket", 'stitchllm_requests_total{finish_reason="length",route="small"}',
                 'stitchllm_requests_total{finish_reason="length",route="L3-S1"}'):
        assert name in text, name


def test_no_leak_after_200_requests_with_cancellations(server):
    url, engine = server
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)

    async def one(i: int):
        if i % 4 == 0:  # cancel mid-stream: read two chunks, then hang up
            stream = await client.completions.create(model="auto", prompt=f"request {i}", max_tokens=40,
                                                     stream=True, extra_body={"ignore_eos": True})
            seen = 0
            async for _ in stream:
                seen += 1
                if seen == 2:
                    break
            await stream.close()
            return None
        resp = await client.completions.create(model=["auto", "large", "small", "L2-S1"][i % 4], prompt=f"r {i}",
                                               max_tokens=3, extra_body={"ignore_eos": True})
        return resp.usage.completion_tokens

    async def all_requests():
        sem = asyncio.Semaphore(16)

        async def bounded(i):
            async with sem:
                return await one(i)

        return await asyncio.gather(*(bounded(i) for i in range(200)))

    results = asyncio.run(all_requests())
    assert [r for r in results if r is not None] == [3] * 150
    for _ in range(100):  # aborts are applied by the engine thread between steps
        if engine.kv.usage() == 0.0 and not engine.has_unfinished():
            break
        asyncio.run(asyncio.sleep(0.05))
    assert engine.kv.usage() == 0.0 and not engine.has_unfinished()


def test_burst_of_64_with_kv_for_8(tiny_catalog):
    catalog = tiny_catalog[0]
    per_seq_mb = 256 * sum(2 * m.config.num_layers * m.config.kv_size * 4 for m in
                           (catalog.family.large, catalog.family.small)) / 2**20
    app, engine = make_app(tiny_catalog, api_key=None, max_num_seqs=64, kv_budget_mb=8.5 * per_seq_mb)
    assert engine.kv.capacity["large"] == 8
    with live_server(app) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)

        async def burst():
            return await asyncio.gather(*(client.completions.create(model="auto", prompt=f"burst {i}", max_tokens=4,
                                                                    extra_body={"ignore_eos": True})
                                          for i in range(64)))

        responses = asyncio.run(burst())
    assert len(responses) == 64 and all(r.usage.completion_tokens == 4 for r in responses)
    assert engine.kv.usage() == 0.0


def test_engine_is_built_and_stepped_on_its_own_thread(tiny_catalog):
    """`serve` builds the engine on the thread that steps it: all tensor work on one thread (see
    AsyncEngine.build), same tokens as the engine stepped directly; a failed build is raised to the caller."""
    import threading

    from stitchllm.errors import StitchError
    from stitchllm.sampling import SamplingParams

    catalog = tiny_catalog[0]
    built_on = []

    def build():
        built_on.append(threading.current_thread().name)
        return LLMEngine(catalog, EngineConfig(max_model_len=64, policy="fixed:large"))

    params = SamplingParams(max_tokens=5, ignore_eos=True)
    direct = build()
    direct.add_request("d", [5, 6, 7, 8], params)
    expected = []
    while direct.has_unfinished():
        expected += [t for out in direct.step() for t in out.new_token_ids]

    async def collect(engine):
        return [t async for out in engine.generate([5, 6, 7, 8], params) for t in out.new_token_ids]

    engine = AsyncEngine.build(build)
    try:
        assert built_on[-1] == "stitchllm-engine" == engine._thread.name and engine._thread.is_alive()
        assert asyncio.run(collect(engine)) == expected and len(expected) == 5
    finally:
        engine.shutdown()
    assert not engine._thread.is_alive()

    def broken():
        raise StitchError("no such model")

    with pytest.raises(StitchError, match="no such model"):
        AsyncEngine.build(broken)


@pytest.mark.parametrize("rust_backend", [True, False])
def test_text_tracker_streams_whole_characters_and_cuts_at_a_stop_string(tiny_catalog, rust_backend):
    """Token by token, as the engine hands them out: multi-byte characters split across tokens are never sent
    half, the pieces join to the tokenizer's own decode, and a stop string spanning tokens ends the text."""
    from stitchllm.server.text import TextTracker

    tokenizer = tiny_catalog[0].family.tokenizer
    text = "Héllo 🙂🚀 日本語のテキスト, don't stop. END of it"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]

    def stream(stops: list[str]) -> tuple[list[str], TextTracker]:
        tracker = TextTracker(tokenizer, stops)
        if not rust_backend:
            tracker._stream = None  # as for a tokenizer without a Rust backend: whole-output decode per token
        deltas = []
        for i, t in enumerate(ids):
            deltas.append(tracker.add([t], finished=i == len(ids) - 1))
            if tracker.stopped:
                break
        return deltas, tracker

    deltas, tracker = stream([])
    assert "".join(deltas) == tokenizer.decode(ids) == text and not tracker.stopped
    assert not any("\ufffd" in d for d in deltas) and deltas.count("") >= 3  # the emoji and CJK bytes held back
    deltas, tracker = stream([". END"])
    assert "".join(deltas) == "Héllo 🙂🚀 日本語のテキスト, don't stop" and tracker.stopped
