"""Linear layers (models/linear.py): one copy of each weight, bf16 matmuls close to fp32 on the real model and
served by the engine where the CPU runs them, refused in one line where it does not."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import needs_bf16

from stitchllm.data.corpus import python_docs_text
from stitchllm.engine.config import EngineConfig
from stitchllm.engine.llm_engine import LLMEngine
from stitchllm.errors import StitchError
from stitchllm.generation import generate
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.cpu import DISABLE_BF16_ENV, cpu_features
from stitchllm.models.linear import Linear, resolve_matmul_dtype
from stitchllm.models.loader import load_model
from stitchllm.sampling import SamplingParams


@needs_bf16
@torch.inference_mode()
def test_bf16_matmuls_track_fp32_on_smollm2(smollm2):
    _, tokenizer, model_dir = smollm2
    model = load_model(model_dir)  # its own copy: packing in bf16 replaces the fp32 weights
    ids = torch.tensor(tokenizer(python_docs_text("heldout"), add_special_tokens=False)["input_ids"][:512])
    batch = ForwardBatch([0], [0], [len(ids)])
    fp32 = model(ids, batch)
    model.prepack(torch.bfloat16)
    bf16 = model(ids, batch)
    assert bf16.dtype == torch.float32  # activations stay fp32 between linears
    assert model.blocks[0].down.weight.numel() == 0  # the bf16 packing is the only copy
    ppl32, ppl16 = (math.exp(F.cross_entropy(lg[:-1], ids[1:])) for lg in (fp32, bf16))
    assert abs(ppl16 / ppl32 - 1) < 0.01  # measured on the whole held-out text: +0.03%
    agree = (bf16.argmax(-1) == fp32.argmax(-1)).float().mean()
    assert agree > 0.985, agree  # measured: 0.994 (0.98 when the head ran in bf16 too)


@needs_bf16
def test_engine_serves_bf16_matmuls_like_the_runtime(tiny_catalog, tiny_parent_dir, tiny_sibling):
    """An engine built for bf16 repacks the catalog; batched tokens equal each route's alone, in bf16 too."""
    from stitchllm.routing.catalog import load_catalog

    _, stitch_dir, router, manifest = tiny_catalog
    catalog = load_catalog(str(tiny_parent_dir), str(tiny_sibling[0]), str(stitch_dir))  # its own copy, as above
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    prompt = list(range(5, 25))
    engine = LLMEngine(catalog, EngineConfig(max_model_len=64, policy="fixed:large", matmul_dtype="bfloat16"),
                       router, manifest["thresholds"])
    large = catalog.family.large
    assert engine.matmul_dtype == "bfloat16" and large.blocks[0].down._packed.dtype == torch.bfloat16
    assert large.lm_head._packed.dtype == torch.float32  # the head stays fp32 (DecoderModel.prepack)
    for i in range(4):
        engine.add_request(f"r{i}", prompt[i:], params)
    served = {}
    while engine.has_unfinished():
        for out in engine.step():
            served.setdefault(out.request_id, []).extend(out.new_token_ids)
    route = catalog.route("large")
    for i in range(4):
        alone = generate(catalog.executor.last_logits(route, 1, 64), [prompt[i:]], params, set())[0]
        assert served[f"r{i}"] == alone


def test_packed_weight_replaces_the_dense_one():
    """prepack keeps one copy: the dense weight is released, rebuilt exactly from the fp32 packing where needed
    (autograd through a frozen model), and the packed path computes what F.linear does."""
    torch.manual_seed(0)
    layer = Linear(48, 32)
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    x = torch.randn(5, 48)
    layer.pack(torch.float32, release=True)
    assert layer.released and layer.weight.numel() == 0
    assert torch.equal(layer.dense_weight(), weight)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    x.requires_grad_(True)
    layer(x).sum().backward()  # the training path: F.linear on the rebuilt weight
    torch.testing.assert_close(x.grad, weight.sum(0).expand(5, -1), rtol=1e-5, atol=1e-6)


def test_matmul_dtype_names():
    assert resolve_matmul_dtype("float32") == torch.float32
    assert resolve_matmul_dtype("auto") in (torch.float32, torch.bfloat16)
    with pytest.raises(StitchError, match="unknown matmul dtype 'fp16': use auto, float32, bfloat16"):
        EngineConfig(matmul_dtype="fp16")


def test_bf16_is_refused_on_a_cpu_without_it(monkeypatch):
    """The capability check is injectable (STITCHLLM_CPU_BF16=0), so this refusal is tested on every CPU."""
    monkeypatch.setenv(DISABLE_BF16_ENV, "0")
    cpu_features.cache_clear()
    try:
        features = cpu_features()
        assert not features.bf16_matmul and not features.native_bf16
        assert resolve_matmul_dtype("auto") == torch.float32
        with pytest.raises(StitchError, match=r"bfloat16 matmuls need .* use --matmul-dtype auto or float32$"):
            resolve_matmul_dtype("bfloat16")
        with pytest.raises(StitchError, match="bfloat16 matmuls need"):
            EngineConfig(matmul_dtype="bfloat16")
    finally:
        monkeypatch.delenv(DISABLE_BF16_ENV)
        cpu_features.cache_clear()
