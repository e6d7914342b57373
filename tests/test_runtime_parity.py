"""The block runtime computes exactly what transformers computes, on tiny random models and on real SmolLM2."""

import pytest
import torch

from conftest import save_tiny_hf_model
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.loader import load_model


def full_batch(n: int) -> ForwardBatch:
    return ForwardBatch(slots=[0], starts=[0], lengths=[n])


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2"])
def test_tiny_logits_match_transformers(tmp_path, model_type):
    hf = save_tiny_hf_model(tmp_path, model_type)
    model = load_model(tmp_path)
    ids = torch.randint(0, 320, (37,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids[None]).logits[0]
    got = model(ids, full_batch(len(ids)))
    assert expected.abs().max() > 0.5  # random weights give non-trivial logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_qwen2_has_qkv_bias(tmp_path):
    save_tiny_hf_model(tmp_path, "qwen2")
    model = load_model(tmp_path)
    assert model.config.qkv_bias and model.blocks[0].qkv.bias is not None
    assert model.blocks[0].qkv.bias.abs().sum() > 0


def test_smollm2_logits_match_transformers(smollm2):
    from transformers import AutoModelForCausalLM

    model, tokenizer, model_dir = smollm2
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor(tokenizer("The capital of France is Paris. The capital of Germany is")["input_ids"])
    with torch.no_grad():
        expected = hf(ids[None]).logits[0]
    got = model(ids, full_batch(len(ids)))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert tokenizer.decode(int(got[-1].argmax())).strip() == "Berlin"


def test_config_facts(smollm2):
    from stitchllm.models.decoder import DecoderModel

    c = smollm2[0].config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size) == (30, 576, 9, 3, 49152)
    assert c.tie_word_embeddings
    with torch.device("meta"):  # the loaded model's packed weights replaced its dense ones: count a skeleton
        skeleton = DecoderModel(c)
    assert c.total_params == sum(p.numel() for p in skeleton.parameters())
    assert c.block_params == sum(p.numel() for p in skeleton.blocks[0].parameters())


@pytest.mark.parametrize("tied", [False, True])
def test_tiny_qwen2_heads_untied_and_tied_match_transformers(tmp_path, tied):
    """Qwen2.5-Coder 0.5B and 1.5B ship untied heads (converted from GGUF): both layouts load exactly."""
    hf = save_tiny_hf_model(tmp_path, "qwen2", tie_word_embeddings=tied)
    model = load_model(tmp_path)
    assert model.config.tie_word_embeddings == tied
    ids = torch.randint(0, 320, (29,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = hf(ids[None]).logits[0]
    torch.testing.assert_close(model(ids, full_batch(len(ids))), expected, atol=1e-4, rtol=0)
