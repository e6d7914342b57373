"""Quantised weights (models/quantized.py): int8 / int4 forms replace the dense weight, compute what their
dequantised weight does, keep greedy generation consistent, and are refused in one line where the kernel is missing.

Tolerances (relative L2 error of a tiny random model's logits, measured 0.013-0.017 for int8, 0.20-0.22 for int4 over
three seeds): an int8 per-row weight is off by up to half a step of row-max / 127 (~0.6% of a matmul's output for
Gaussian rows) and the bf16 activations add ~0.3% per linear; int4 has 16 levels per group of 64 Gaussian weights
(~9% per matmul), compounded over 8 linears. Against the dequantised weights packed in fp32, only the bf16
activations differ (measured 0.004-0.005)."""

import math

import pytest
import torch
import torch.nn.functional as F

from stitchllm.engine.config import EngineConfig
from stitchllm.errors import StitchError
from stitchllm.generation import generate, model_last_logits
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.config import ModelConfig
from stitchllm.models.cpu import DISABLE_INT4_ENV, DISABLE_INT8_ENV, cpu_features
from stitchllm.models.linear import Linear
from stitchllm.models.loader import random_model
from stitchllm.models.quantized import Int4Weight, Int8Weight, resolve_weight_format
from stitchllm.sampling import SamplingParams

# qwen2: the q/k/v bias goes through the quantised path too. Every layer fits int4 (out % 16, in % 64).
CONFIG = ModelConfig(model_type="qwen2", vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=16, intermediate_size=128, max_position_embeddings=128, qkv_bias=True)
TOLERANCE = {"int8": 0.03, "int4": 0.3}  # relative logit error against fp32 (module docstring)
SIZE = {"int8": 0.26, "int4": 0.15}  # bytes held / fp32 bytes: int8 1/4 + a bf16 scale a row; int4 1/8 + 1/64
IDS = torch.randint(0, CONFIG.vocab_size, (40,), generator=torch.Generator().manual_seed(0))
WHOLE = ForwardBatch([0], [0], [len(IDS)])


def needs(fmt: str):
    ok = cpu_features().int8_weights if fmt == "int8" else cpu_features().int4_weights
    return pytest.param(fmt, marks=pytest.mark.skipif(not ok, reason=f"no {fmt} kernel in this PyTorch/CPU"))


FORMATS = [needs("int8"), needs("int4")]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("fmt", FORMATS)
@torch.inference_mode()
def test_quantised_logits_track_fp32(fmt):
    fp32 = random_model(CONFIG)(IDS, WHOLE)
    model = random_model(CONFIG).prepack(weights=fmt)
    quantised = model(IDS, WHOLE)
    assert quantised.dtype == torch.float32  # bf16 only inside the kernels
    assert relative(quantised, fp32) < TOLERANCE[fmt]
    model.prepack()  # back to fp32 packings of the dequantised weights: only the bf16 activations differ now
    assert relative(quantised, model(IDS, WHOLE)) < 0.01


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantised_weight_replaces_the_dense_one(fmt):
    original = random_model(CONFIG)
    model = random_model(CONFIG).prepack(weights=fmt)
    kind = Int8Weight if fmt == "int8" else Int4Weight
    for (name, layer), (_, dense) in zip(model.named_modules(), original.named_modules()):
        if not isinstance(layer, Linear) or layer is model.lm_head:
            continue
        assert isinstance(layer.quantized, kind) and layer.released, name
        assert layer.weight.numel() == 0 and layer._packed is None  # no fp32 (or packed) copy left
        w = dense.dense_weight()
        assert layer.quantized.nbytes / (w.numel() * 4) < SIZE[fmt]
        error = (layer.dense_weight() - w).abs()
        if fmt == "int8":  # half a step of the row's largest |w| / 127, and the bf16 rounding of the scale
            assert (error.amax(1) <= w.abs().amax(1) / 254 * 1.02).all(), name
        else:  # half a step of the group's range / 15, and the bf16 rounding of scale and offset
            groups = w.view(w.shape[0], -1, layer.quantized.group_size)
            bound = (groups.amax(-1) - groups.amin(-1)) / 30 * 1.05
            assert (error.view_as(groups).amax(-1) <= bound).all(), name
    assert model.lm_head.quantized is None and model.lm_head._packed.dtype == torch.float32  # the head stays fp32
    x = torch.randn(3, CONFIG.hidden_size, requires_grad=True)  # autograd runs F.linear on the dequantised weight
    layer = model.blocks[0].gate_up
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.dense_weight().sum(0).expand(3, -1))


@pytest.mark.parametrize("fmt", FORMATS)
@torch.inference_mode()
def test_greedy_generation_with_quantised_weights(fmt):
    """Decoding one token at a time (1-row matmuls) picks what a teacher-forced pass over the result picks, and
    batching two prompts changes no token."""
    model = random_model(CONFIG).prepack(weights=fmt)
    params, prompts = SamplingParams(max_tokens=12, ignore_eos=True), [list(range(5, 25)), list(range(30, 37))]
    together = generate(model_last_logits(model, 2, 64), prompts, params, set())
    assert together == [generate(model_last_logits(model, 1, 64), [p], params, set())[0] for p in prompts]
    for prompt, new in zip(prompts, together):
        seq = torch.tensor(prompt + new)
        logits = model(seq, ForwardBatch([0], [0], [len(seq)]))
        assert logits[len(prompt) - 1:-1].argmax(-1).tolist() == new


@pytest.mark.skipif(not cpu_features().int8_weights, reason="no int8 kernel in this PyTorch/CPU")
def test_requantising_keeps_the_quantised_weight():
    """prepack asked again for the same format keeps each quantised weight (rounding a rounded weight again would
    only add error); asked for fp32, it packs the dequantised weight."""
    model = random_model(CONFIG).prepack(weights="int8")
    held = model.blocks[1].down.quantized
    model.prepack(weights="int8")
    assert model.blocks[1].down.quantized is held
    model.prepack()
    assert model.blocks[1].down.quantized is None and torch.equal(model.blocks[1].down.dense_weight(), held.dense())


@pytest.mark.skipif(not cpu_features().int4_weights, reason="no int4 kernel in this PyTorch/CPU")
def test_int4_layout_across_chunks_and_a_short_last_tile():
    """4176 rows: quantised in 4096-row chunks, and the last 64-row tile of the packing holds only 16 rows."""
    w = torch.randn(4176, 96, generator=torch.Generator().manual_seed(1))
    q = Int4Weight(w)
    assert q.group_size == 32  # the largest of 128 / 64 / 32 that divides 96
    dense = q.dense()
    assert relative(dense, w) < 0.1  # 16 levels per group of 32 Gaussian weights: measured 0.077
    x = torch.randn(5, 96).bfloat16()
    torch.testing.assert_close(q.matmul(x).float(), x.float() @ dense.T, rtol=1e-2, atol=2e-2)  # bf16 output


def test_weight_format_names_and_auto():
    assert resolve_weight_format("fp32") == "fp32"
    features = cpu_features()
    both = features.int8_weights and features.int4_weights
    assert resolve_weight_format("auto") == resolve_weight_format("auto", torch.bfloat16) == ("gguf" if both else "fp32")
    with pytest.raises(StitchError, match="unknown weight format 'nf4': use auto, fp32, int8, int4, gguf$"):
        EngineConfig(weights="nf4")
    assert EngineConfig().weights == "fp32"  # the engine's default is unchanged


# gguf needs both kernels: where the int8 one is missing too (STITCHLLM_CPU_INT8=0 for the whole run), that one is
# named first and fp32 alone is offered
@pytest.mark.parametrize("env, fmt, alternative", [(DISABLE_INT4_ENV, "int4", "int8 or fp32"),
                                                    (DISABLE_INT8_ENV, "int8", "fp32"),
                                                    (DISABLE_INT4_ENV, "gguf", "(int8 or )?fp32")])
def test_missing_kernel_is_a_one_line_error(monkeypatch, env, fmt, alternative):
    """The capability check is injectable (STITCHLLM_CPU_INT4=0 / _INT8=0), so the refusal is tested on every CPU."""
    monkeypatch.setenv(env, "0")
    cpu_features.cache_clear()
    try:
        assert not (cpu_features().int8_weights and cpu_features().int4_weights)
        with pytest.raises(StitchError, match=rf"^{fmt} weights need .* use --weights {alternative}$") as err:
            random_model(CONFIG).prepack(weights=fmt)
        assert "\n" not in str(err.value)
        with pytest.raises(StitchError, match=f"{fmt} weights need"):
            EngineConfig(weights=fmt)
        assert resolve_weight_format("auto") == "fp32"  # auto only picks what runs
    finally:
        monkeypatch.delenv(env)
        cpu_features.cache_clear()


def test_int4_refuses_a_shape_its_packing_cannot_hold():
    with pytest.raises(StitchError, match=r"int4 weights need out_features divisible by 16 .* \(this layer: 40 x 64\)"):
        Int4Weight(torch.randn(40, 64))


@pytest.mark.skipif(not cpu_features().int8_weights, reason="no int8 kernel in this PyTorch/CPU")
@torch.inference_mode()
def test_int8_blocks_track_fp32_on_smollm2(smollm2):
    """Real weights: int8 blocks (head fp32) cost little perplexity; they move more top-1 tokens than bf16 matmuls do
    (measured on 1024 tokens: ppl +0.16%, top-1 agreement 0.968; bf16: +0.11%, 0.997)."""
    from stitchllm.data.corpus import python_docs_text
    from stitchllm.models.loader import load_model

    _, tokenizer, model_dir = smollm2
    model = load_model(model_dir)  # its own copy: quantising replaces the fp32 weights
    ids = torch.tensor(tokenizer(python_docs_text("heldout"), add_special_tokens=False)["input_ids"][:512])
    batch = ForwardBatch([0], [0], [len(ids)])
    fp32 = model(ids, batch)
    int8 = model.prepack(weights="int8")(ids, batch)
    ppl32, ppl8 = (math.exp(F.cross_entropy(lg[:-1], ids[1:])) for lg in (fp32, int8))
    assert abs(ppl8 / ppl32 - 1) < 0.01
    agree = (int8.argmax(-1) == fp32.argmax(-1)).float().mean()
    assert agree > 0.95, agree


@pytest.mark.parametrize("fmt", FORMATS)
@torch.inference_mode()
def test_loading_quantises_each_weight_as_it_arrives(fmt, tiny_parent_dir, monkeypatch):
    """load_model(weights=fmt) quantises every linear but the head on arrival, to exactly the weights of an fp32
    load quantised afterwards, and never packs a block's weight in fp32 first."""
    from stitchllm.models.loader import load_model

    after = load_model(tiny_parent_dir).prepack(torch.float32, fmt)
    packed = []
    pack = Linear.pack
    monkeypatch.setattr(Linear, "pack", lambda self, *a, **k: packed.append(self) or pack(self, *a, **k))
    streamed = load_model(tiny_parent_dir, weights=fmt)
    assert all(m is streamed.lm_head for m in packed)  # blocks were quantised straight from the checkpoint
    for name, m in streamed.named_modules():
        if isinstance(m, Linear) and m is not streamed.lm_head:
            assert m.released and m.quantized is not None, name
    ids = torch.arange(12)
    batch = ForwardBatch([0], [0], [12])
    expected = after.head(after.norm(after.run_blocks(after.embed(ids), batch, None)))
    got = streamed.head(streamed.norm(streamed.run_blocks(streamed.embed(ids), batch, None)))
    assert torch.equal(got, expected)


def test_loading_an_unknown_format_is_one_line_before_reading(tiny_parent_dir):
    from stitchllm.models.loader import load_model

    with pytest.raises(StitchError, match=r"^unknown weight format 'int3': use auto, fp32, int8, int4, gguf$"):
        load_model(tiny_parent_dir, weights="int3")
