"""Logprobs as OpenAI and vLLM define them: the route's raw log_softmax, checked against scoring the same tokens
on the same route without a cache; echo + max_tokens=0 (lm-eval's log-likelihood request); chat; streams; 400s."""

import json

import httpx
import openai
import pytest
import torch

from server_util import live_server
from stitchllm.engine import logprobs as engine_logprobs
from stitchllm.engine.async_engine import AsyncEngine
from stitchllm.engine.config import EngineConfig
from stitchllm.engine.llm_engine import LLMEngine
from stitchllm.errors import StitchError
from stitchllm.family.family import load_family
from stitchllm.models.batch import ForwardBatch
from stitchllm.routing.catalog import build_catalog
from stitchllm.routing.router_model import RouterMLP
from stitchllm.sampling import SamplingParams
from stitchllm.server.app import create_app
from stitchllm.stitch.layer import StitchLayer

KEY = "test-key"
TOL = 1e-4


@pytest.fixture(scope="module")
def catalog(tiny_parent_dir, tiny_small_dir):
    """The tiny parent as `large`, a smaller random model with its tokenizer as `small`, and one random stitch:
    routes large, small and L2-S1 in seconds (no distillation, no training: logprobs need no quality)."""
    small_dir = tiny_small_dir
    family = load_family(tiny_parent_dir, small_dir)
    g = torch.Generator().manual_seed(0)
    stitch = StitchLayer(64, 32, 2, 1)
    stitch.set_affine(0.2 * torch.randn(32, 64, generator=g), 0.01 * torch.randn(32, generator=g))
    return build_catalog(family, {stitch.key: stitch})


@pytest.fixture(scope="module")
def server(catalog):
    """Pinned routes by name; `auto` goes through a router that predicts a large loss for `small` and none for
    L2-S1, priced so that L2-S1 wins: its prompt climbs the bottom block in chunks of the step budget, then its
    route continues from those states (through large block 1, the stitch, small block 1)."""
    names = [r.name for r in catalog.routes]
    router = RouterMLP(2 * 64, names, hidden=8, feature_block=1)
    with torch.no_grad():
        router.net[2].weight.zero_()
        router.net[2].bias.copy_(torch.tensor([10.0 if n == "small" else -10.0 for n in names]))
    engine = LLMEngine(catalog, EngineConfig(max_model_len=256, max_num_batched_tokens=32, policy="router",
                                             matmul_dtype="float32"), router, {"router": [[0.0, 8.0], [1.0, 8.0]]})
    with live_server(create_app(AsyncEngine(engine), catalog.family.tokenizer, KEY)) as url:
        yield url, engine


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)


@torch.inference_mode()
def reference(catalog, route: str, ids: list[int]) -> torch.Tensor:
    """[T, V] fp32 log-probabilities of the route at every position, scored in one cache-free pass."""
    logits = catalog.executor.full_logits(catalog.route(route))(torch.tensor(ids), ForwardBatch([0], [0], [len(ids)]))
    return torch.log_softmax(logits.float(), dim=-1)


def greedy(catalog, route: str, ids: list[int], n: int) -> list[int]:
    """The route's greedy continuation, each token from a cache-free pass over everything before it."""
    seq = list(ids)
    for _ in range(n):
        seq.append(int(reference(catalog, route, seq)[-1].argmax()))
    return seq[len(ids):]


def random_ids(n: int, seed: int) -> list[int]:
    return torch.randint(3, 49152, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def assert_prompt_logprobs(catalog, route: str, ids: list[int], lp) -> None:
    """Completions logprobs of an echoed prompt (top-1) against the route's own scoring."""
    ref = reference(catalog, route, ids)
    tok = catalog.family.tokenizer
    assert lp.tokens[: len(ids)] == [tok.decode([t]) for t in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing predicts the first token
    want = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]  # position t predicts token t+1
    torch.testing.assert_close(torch.tensor(lp.token_logprobs[1 : len(ids)]), want, atol=TOL, rtol=0)
    best = torch.tensor([next(iter(top.values())) for top in lp.top_logprobs[1 : len(ids)]])
    torch.testing.assert_close(best, ref[:-1].max(dim=-1).values, atol=TOL, rtol=0)
    assert all(len(top) == 1 for top in lp.top_logprobs[1 : len(ids)])


@pytest.mark.parametrize("model, prompt_len", [("large", 100), ("small", 9), ("L2-S1", 70), ("auto", 80)])
def test_echo_with_max_tokens_0_scores_the_prompt_on_its_route(client, catalog, model, prompt_len):
    """lm-eval's local-completions log-likelihood request: a batch of one token-id prompt, echo, max_tokens 0.
    Prompts longer than the runner's scoring chunk (64 positions) cross chunk boundaries."""
    ids = random_ids(prompt_len, seed=prompt_len)
    resp = client.completions.create(model=model, prompt=[ids], echo=True, max_tokens=0, logprobs=1, temperature=0,
                                     seed=1234)
    choice, route = resp.choices[0], resp.model_extra["route"]
    assert route == (model if model != "auto" else "L2-S1")
    assert resp.usage.completion_tokens == 0 and resp.usage.prompt_tokens == prompt_len
    assert choice.finish_reason == "length"
    assert choice.text == catalog.family.tokenizer.decode(ids, skip_special_tokens=True)
    assert len(choice.logprobs.tokens) == prompt_len
    assert_prompt_logprobs(catalog, route, ids, choice.logprobs)


@pytest.mark.parametrize("model", ["L2-S1", "large"])
def test_generated_tokens_logprobs_match_the_route_scoring_prompt_and_output(client, catalog, model):
    tok = catalog.family.tokenizer
    prompt = "The quick brown fox jumps over"
    ids = tok(prompt)["input_ids"]
    resp = client.completions.create(model=model, prompt=prompt, max_tokens=6, logprobs=5, temperature=0,
                                     extra_body={"ignore_eos": True})
    lp = resp.choices[0].logprobs
    out_ids = greedy(catalog, model, ids, 6)
    assert lp.tokens == [tok.decode([t]) for t in out_ids] and "".join(lp.tokens) == resp.choices[0].text
    ref = reference(catalog, model, ids + out_ids)[len(ids) - 1 : -1]  # [6, V]: the rows that predicted the output
    torch.testing.assert_close(torch.tensor(lp.token_logprobs), ref.max(dim=-1).values, atol=TOL, rtol=0)
    for i, top in enumerate(lp.top_logprobs):
        values = list(top.values())
        assert len(top) == 5 and values == sorted(values, reverse=True)
        assert top[lp.tokens[i]] == lp.token_logprobs[i]  # the sampled token is among them, same value
        torch.testing.assert_close(torch.tensor(values), ref[i].topk(5).values, atol=TOL, rtol=0)
        assert list(top) == [tok.decode([t]) for t in ref[i].topk(5).indices.tolist()]
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(6)]

    echoed = client.completions.create(model=model, prompt=prompt, max_tokens=6, logprobs=5, temperature=0, echo=True,
                                       extra_body={"ignore_eos": True}).choices[0]
    assert echoed.logprobs.tokens[len(ids):] == lp.tokens
    assert echoed.logprobs.token_logprobs[len(ids):] == lp.token_logprobs
    assert echoed.text == prompt + resp.choices[0].text
    assert echoed.logprobs.text_offset == [len("".join(echoed.logprobs.tokens[:i])) for i in range(len(ids) + 6)]


def test_logprobs_are_raw_whatever_the_temperature(catalog, monkeypatch):
    """Sampled at temperature 1.5 with top-k, scored from the untempered distribution (vLLM's raw logprobs); a
    request that did not ask gets none; prompt scoring in chunks of 5 equals scoring it whole."""
    engine = LLMEngine(catalog, EngineConfig(max_model_len=128, policy="fixed:L2-S1", matmul_dtype="float32"))
    ids = random_ids(23, seed=7)
    engine.add_request("hot", ids, SamplingParams(max_tokens=5, temperature=1.5, top_k=50, seed=3, ignore_eos=True,
                                                  logprobs=2, prompt_logprobs=2))
    engine.add_request("plain", ids, SamplingParams(max_tokens=5, ignore_eos=True))
    outputs = []
    monkeypatch.setattr(engine_logprobs, "PROMPT_CHUNK", 5)
    while engine.has_unfinished():
        outputs += engine.step()
    hot = [o for o in outputs if o.request_id == "hot"]
    assert all(o.logprobs is None and o.prompt_logprobs is None for o in outputs if o.request_id == "plain")
    assert hot[0].prompt_logprobs is not None and all(o.prompt_logprobs is None for o in hot[1:])
    out_ids = [t for o in hot for t in o.new_token_ids]
    ref = reference(catalog, "L2-S1", ids + out_ids)
    entries = hot[0].prompt_logprobs[1:] + [e for o in hot for e in o.logprobs]
    assert hot[0].prompt_logprobs[0] is None and [e.token_id for e in entries] == ids[1:] + out_ids
    want = ref[torch.arange(len(entries)), torch.tensor(ids[1:] + out_ids)]
    torch.testing.assert_close(torch.tensor([e.logprob for e in entries]), want, atol=TOL, rtol=0)
    torch.testing.assert_close(torch.tensor([[lp for _, lp in e.top] for e in entries]),
                               ref[: len(entries)].topk(2).values, atol=TOL, rtol=0)
    assert out_ids != ref[len(ids) - 1 : -1].argmax(-1).tolist()  # it did sample: not the greedy tokens


def test_chat_logprobs_tokens_join_to_the_content(client, catalog):
    messages = [{"role": "user", "content": "Say hello"}]
    resp = client.chat.completions.create(model="L2-S1", messages=messages, max_tokens=8, temperature=0,
                                          logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content, entries = resp.choices[0].message.content, resp.choices[0].logprobs.content
    assert len(entries) == 8 and "".join(e.token for e in entries) == content
    assert bytes(b for e in entries for b in e.bytes).decode() == content
    for e in entries:
        assert len(e.top_logprobs) == 3 and [t.logprob for t in e.top_logprobs] == sorted(
            [t.logprob for t in e.top_logprobs], reverse=True)
        assert (e.token, e.logprob) == (e.top_logprobs[0].token, e.top_logprobs[0].logprob)  # greedy
        assert e.bytes == list(e.token.encode())
    stream = client.chat.completions.create(model="L2-S1", messages=messages, max_tokens=8, temperature=0,
                                            logprobs=True, top_logprobs=3, stream=True, extra_body={"ignore_eos": True})
    streamed = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in entries]
    plain = client.chat.completions.create(model="L2-S1", messages=messages, max_tokens=2, temperature=0)
    assert plain.choices[0].logprobs is None


def test_streamed_completion_logprobs_equal_the_whole_response(client):
    args = dict(model="small", prompt="Once upon a time", max_tokens=7, logprobs=2, temperature=0, echo=True,
                extra_body={"ignore_eos": True})
    whole = client.completions.create(**args).choices[0]
    chunks = [c.choices[0] for c in client.completions.create(stream=True, **args)]
    assert "".join(c.text for c in chunks) == whole.text
    got = {k: [v for c in chunks if c.logprobs for v in getattr(c.logprobs, k)]
           for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
    assert got == {k: getattr(whole.logprobs, k) for k in got}
    assert chunks[0].logprobs.token_logprobs[0] is None  # the echoed prompt comes first


def test_max_tokens_0_only_scores_a_prompt():
    with pytest.raises(StitchError, match="max_tokens must be at least 1, got 0"):
        SamplingParams(max_tokens=0)
    assert SamplingParams(max_tokens=0, prompt_logprobs=0).max_tokens == 0
    with pytest.raises(StitchError, match="prompt_logprobs must be between 0 and 20, got 21"):
        SamplingParams(prompt_logprobs=21)


@pytest.mark.parametrize("chat, kwargs, message", [
    (False, {"logprobs": 21}, "logprobs must be between 0 and 20, got 21"),
    (False, {"logprobs": -1}, "logprobs must be between 0 and 20, got -1"),
    (True, {"logprobs": True, "top_logprobs": -1}, "top_logprobs must be between 0 and 20, got -1"),
    (True, {"logprobs": True, "top_logprobs": 21}, "top_logprobs must be between 0 and 20, got 21"),
    (True, {"top_logprobs": 2}, "top_logprobs needs logprobs=true"),
    (False, {"n": 2}, "n=2 is not supported"),
    (True, {"n": 3}, "n=3 is not supported"),
    (False, {"max_tokens": 0}, "max_tokens must be at least 1"),
    (False, {"max_tokens": 0, "echo": True}, "max_tokens must be at least 1"),  # echo alone scores nothing
    (False, {"max_tokens": 0, "logprobs": 1}, "max_tokens must be at least 1"),
    (False, {"prompt": [[5, 6], [7, 8]]}, "batched prompts are not supported"),
])
def test_bad_logprobs_requests_are_400_with_one_line(client, chat, kwargs, message):
    with pytest.raises(openai.BadRequestError) as err:
        if chat:
            client.chat.completions.create(**({"model": "auto", "messages": [{"role": "user", "content": "hi"}],
                                                "max_tokens": 2} | kwargs))
        else:
            client.completions.create(**({"model": "auto", "prompt": "hi", "max_tokens": 2} | kwargs))
    assert err.value.status_code == 400 and message in err.value.message and "\n" not in err.value.message


def test_raw_http_shapes(server):
    """The JSON itself (no client types): null first prompt logprob, per-position dicts, chat's bytes lists."""
    url = server[0]
    headers = {"Authorization": f"Bearer {KEY}"}
    body = httpx.post(url + "/v1/completions", headers=headers, timeout=60,
                      json={"model": "large", "prompt": [[5, 6, 7]], "echo": True, "max_tokens": 1, "logprobs": 0,
                            "temperature": 0}).json()
    lp = body["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"] == [None, {}, {}, {}]
    assert len(lp["tokens"]) == 4 and all(isinstance(v, float) for v in lp["token_logprobs"][1:])
    chat = httpx.post(url + "/v1/chat/completions", headers=headers, timeout=60,
                      json={"model": "small", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1,
                            "logprobs": True}).json()
    (entry,) = chat["choices"][0]["logprobs"]["content"]
    assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"} and entry["top_logprobs"] == []
    assert json.dumps(entry)  # plain JSON types throughout
