"""bf16 matmuls (models/linear.py): close to fp32 on the real model, served by the engine, and undone exactly."""

import math

import pytest
import torch
import torch.nn.functional as F

from stitchllm.data.corpus import python_docs_text
from stitchllm.engine.config import EngineConfig
from stitchllm.engine.llm_engine import LLMEngine
from stitchllm.errors import StitchError
from stitchllm.generation import generate
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.linear import resolve_matmul_dtype
from stitchllm.sampling import SamplingParams


@torch.inference_mode()
def test_bf16_matmuls_track_fp32_on_smollm2(smollm2):
    model, tokenizer, _ = smollm2
    ids = torch.tensor(tokenizer(python_docs_text("heldout"), add_special_tokens=False)["input_ids"][:512])
    batch = ForwardBatch([0], [0], [len(ids)])
    try:
        fp32 = model(ids, batch)
        model.prepack(torch.bfloat16)
        bf16 = model(ids, batch)
        model.prepack(torch.float32)
        again = model(ids, batch)
    finally:
        model.prepack(torch.float32)
    assert bf16.dtype == torch.float32  # activations stay fp32 between linears
    ppl32, ppl16 = (math.exp(F.cross_entropy(lg[:-1], ids[1:])) for lg in (fp32, bf16))
    assert abs(ppl16 / ppl32 - 1) < 0.01  # measured on the whole held-out text: +0.03%
    agree = (bf16.argmax(-1) == fp32.argmax(-1)).float().mean()
    assert agree > 0.985, agree  # measured: 0.994 (0.98 when the head ran in bf16 too)
    assert not torch.equal(bf16, fp32) and torch.equal(again, fp32)  # packing back to fp32 is exact


def test_engine_serves_bf16_matmuls_like_the_runtime(tiny_catalog):
    """An engine built for bf16 repacks the catalog; batched tokens equal each route's alone, in bf16 too."""
    catalog, _, router, manifest = tiny_catalog
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    prompt = list(range(5, 25))
    try:
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
    finally:
        catalog.set_matmul_dtype(torch.float32)


def test_matmul_dtype_names():
    assert resolve_matmul_dtype("float32") == torch.float32 and resolve_matmul_dtype("bfloat16") == torch.bfloat16
    assert resolve_matmul_dtype("auto") in (torch.float32, torch.bfloat16)
    with pytest.raises(StitchError, match="unknown matmul dtype 'fp16': use auto, float32, bfloat16"):
        EngineConfig(matmul_dtype="fp16")
