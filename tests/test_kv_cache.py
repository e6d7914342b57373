"""Prefill + decode through the KV cache reproduces a full forward; batching changes no generated token.
Decode attention is checked on both its paths: the CPU kernel and PyTorch's SDPA (its fallback)."""

import pytest
import torch

from stitchllm.generation import generate, model_last_logits
from stitchllm.models import attention
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.config import ModelConfig
from stitchllm.models.loader import random_model
from stitchllm.sampling import SamplingParams


@pytest.fixture(scope="module")
def tiny():
    config = ModelConfig(model_type="llama", vocab_size=200, hidden_size=48, num_layers=2, num_heads=6,
                         num_kv_heads=2, head_dim=8, intermediate_size=80, max_position_embeddings=128)
    return random_model(config, seed=3)


@pytest.fixture(params=["kernel", "sdpa"])
def decode_path(request, monkeypatch):
    if request.param == "sdpa":
        monkeypatch.setattr(attention, "decode_attention_kernel", lambda: None)
    return request.param


def incremental_logits(model, ids: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    """Feed ids through the cache in the given chunk sizes; return logits of every position [T, V]."""
    cache = model.new_cache(num_slots=3, max_len=64)
    out, start = [], 0
    for n in chunks:
        batch = ForwardBatch(slots=[2], starts=[start], lengths=[n])
        out.append(model(ids[start:start + n], batch, cache))
        start += n
    return torch.cat(out)


@pytest.mark.parametrize("chunks", [[10] + [1] * 14, [7, 8, 9], [1] * 24])
def test_cached_decode_matches_full_forward(tiny, chunks, decode_path):
    ids = torch.randint(0, 200, (sum(chunks),), generator=torch.Generator().manual_seed(0))
    full = tiny(ids, ForwardBatch([0], [0], [len(ids)]))
    torch.testing.assert_close(incremental_logits(tiny, ids, chunks), full, atol=1e-5, rtol=0)


def test_smollm2_cached_decode_matches_full_forward(smollm2):
    model, tokenizer, _ = smollm2
    ids = torch.tensor(tokenizer("Block by block, the model reads one token at a time and remembers.")["input_ids"])
    full = model(ids, ForwardBatch([0], [0], [len(ids)]))
    chunks = [5] + [1] * (len(ids) - 5)
    torch.testing.assert_close(incremental_logits(model, ids, chunks), full, atol=1e-4, rtol=0)


def test_mixed_batch_of_prefill_and_decode(tiny, decode_path):
    """One packed pass that holds a prefill chunk of one sequence and decode tokens of two others (which take
    the batched decode path, with different context lengths and non-consecutive slots)."""
    a = torch.randint(0, 200, (12,), generator=torch.Generator().manual_seed(1))
    b = torch.randint(0, 200, (9,), generator=torch.Generator().manual_seed(2))
    c = torch.randint(0, 200, (5,), generator=torch.Generator().manual_seed(3))
    cache = tiny.new_cache(num_slots=4, max_len=32)
    tiny(b[:8], ForwardBatch([1], [0], [8]), cache)
    tiny(c[:4], ForwardBatch([3], [0], [4]), cache)
    mixed = tiny(torch.cat([a, b[8:], c[4:]]), ForwardBatch([0, 1, 3], [0, 8, 4], [12, 1, 1]), cache)
    torch.testing.assert_close(mixed[:12], tiny(a, ForwardBatch([0], [0], [12])), atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[12], tiny(b, ForwardBatch([0], [0], [9]))[-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[13], tiny(c, ForwardBatch([0], [0], [5]))[-1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("slots", [[5, 2, 3], [2, 3, 4], [0, 9, 4]])
def test_decode_batch_reads_any_slot_layout(tiny, slots, decode_path):
    """Decode attention reads a slot range as one view (in order, out of order, with a gap) or gathers scattered
    slots; every layout gives each sequence its own logits."""
    seqs = [torch.randint(0, 200, (n,), generator=torch.Generator().manual_seed(n)) for n in (7, 11, 4)]
    cache = tiny.new_cache(num_slots=10, max_len=32)
    for slot, ids in zip(slots, seqs):
        tiny(ids[:-1], ForwardBatch([slot], [0], [len(ids) - 1]), cache)
    step = tiny(torch.stack([ids[-1] for ids in seqs]), ForwardBatch(slots, [len(ids) - 1 for ids in seqs], [1] * 3),
                cache)
    for row, ids in zip(step, seqs):
        torch.testing.assert_close(row, tiny(ids, ForwardBatch([0], [0], [len(ids)]))[-1], atol=1e-5, rtol=0)


def test_batched_greedy_generation_equals_alone(smollm2):
    model, tokenizer, _ = smollm2
    texts = ["The capital of France is", "Here is a list of three fruits:",
             "def fibonacci(n):", "Once upon a time, in a small village by the sea, there lived"]
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    params = SamplingParams(max_tokens=16)
    eos = {tokenizer.eos_token_id}
    batched = generate(model_last_logits(model, len(prompts), 64), prompts, params, eos)
    alone = [generate(model_last_logits(model, 1, 64), [p], params, eos)[0] for p in prompts]
    assert batched == alone
    assert all(len(out) == 16 for out in batched)
    assert "Paris" in tokenizer.decode(batched[0])
