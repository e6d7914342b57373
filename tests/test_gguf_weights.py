"""`--weights gguf` (models/gguf_blocks.py, models/loader.py): a GGUF file's 4-bit tensors are carried into the int4
kernel level for level, its other tensors into int8, and a checkpoint the GGUF file does not match is refused.

The decoding is checked against the `gguf` package's own de-quantisation; the loading on a tiny Qwen2 whose GGUF
file this test writes, and on the real embedded SmolLM2 (Q4_1 blocks in Llama's permuted q/k layout, a Q8_0 head
tied to the embedding)."""

import json
import logging

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter, quants

from conftest import save_tiny_hf_model
from stitchllm.errors import StitchError
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.cpu import cpu_features
from stitchllm.models.gguf_blocks import SOURCE_MARKER, int4_levels
from stitchllm.models.loader import load_model
from stitchllm.models import int_dot
from stitchllm.models.int_dot import IntDotWeight
from stitchllm.models.quantized import Int4Weight, Int8Weight

pytestmark = pytest.mark.skipif(not (cpu_features().int8_weights and cpu_features().int4_weights),
                                reason="no int8 / int4 kernel in this PyTorch/CPU")

# bytes of each block, weights a block, and where its fp16 fields sit
LAYOUTS = {"Q4_0": (18, 32, (0,)), "Q4_1": (20, 32, (0, 2)), "Q4_K": (144, 256, (0, 2))}


def random_blocks(type_name: str, rows: int, k: int, seed: int = 0) -> np.ndarray:
    """Random stored bytes of a [rows, k] tensor of `type_name`, its fp16 scales finite: [rows, bytes a row]."""
    size, per_block, halves = LAYOUTS[type_name]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (rows * k // per_block, size), dtype=np.uint8)
    for at in halves:
        blocks[:, at:at + 2] = rng.uniform(1e-3, 2e-2, (len(blocks), 1)).astype(np.float16).view(np.uint8)
    return blocks.reshape(rows, -1)


@pytest.mark.parametrize("type_name", list(LAYOUTS))
def test_int4_levels_give_back_the_gguf_package_dequantisation(type_name):
    data = random_blocks(type_name, 32, 512)
    q, scale, zero = int4_levels(type_name, data)
    assert q.shape == (32, 512) and scale.shape == zero.shape == (32, 16) and int(q.max()) <= 15
    kept = ((q.float() - 8).view(32, 16, 32) * scale[..., None] + zero[..., None]).view(32, 512)
    reference = torch.from_numpy(quants.dequantize(data, GGMLQuantizationType[type_name]))
    torch.testing.assert_close(kept, reference, rtol=1e-5, atol=1e-6)


@torch.inference_mode()
def test_int4_from_levels_keeps_every_level():
    q, scale, zero = int4_levels("Q4_K", random_blocks("Q4_K", 64, 256, seed=1))
    weight = Int4Weight.from_levels(q, scale, zero)
    stored = (q.float() - 8).view(64, 8, 32) * scale[..., None] + zero[..., None]
    # only scale and zero are rounded (to bf16, the kernel's dtype): a relative 2^-9 of each
    bound = (8 * scale.abs() + zero.abs())[..., None] * 2.0 ** -8
    assert ((weight.dense().view(64, 8, 32) - stored).abs() <= bound).all()
    x = torch.randn(3, 256)
    y, reference = weight.matmul(x.bfloat16()).float(), x @ weight.dense().T
    assert ((y - reference).norm() / reference.norm()).item() < 1e-2  # the kernel's bf16 activations, ~4e-3


def _quantised(w: torch.Tensor, type_name: str) -> tuple[np.ndarray, torch.Tensor]:
    data = quants.quantize(w.numpy(), GGMLQuantizationType[type_name])
    return data, torch.from_numpy(quants.dequantize(data, GGMLQuantizationType[type_name]))


def gguf_checkpoint(tmp_path, perturb: str | None = None):
    """A tiny Qwen2 whose HF checkpoint is the de-quantisation of a GGUF file written here, as
    `family fetch` leaves a family member: q/k/v and gate/up in 4-bit types, down and the head in Q8_0."""
    hf = save_tiny_hf_model(tmp_path / "hf", "qwen2", hidden_size=64, intermediate_size=128)
    names = {"self_attn.q_proj": ("attn_q", "Q4_0"), "self_attn.k_proj": ("attn_k", "Q4_1"),
             "self_attn.v_proj": ("attn_v", "Q4_0"), "self_attn.o_proj": ("attn_output", "Q4_1"),
             "mlp.gate_proj": ("ffn_gate", "Q4_0"), "mlp.up_proj": ("ffn_up", "Q4_1"),
             "mlp.down_proj": ("ffn_down", "Q8_0")}
    writer = GGUFWriter(tmp_path / "tiny.gguf", "qwen2")
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if not name.endswith(".weight") or "norm" in name or "embed" in name:
                continue
            if name == "lm_head.weight":
                gguf_name, type_name = "output.weight", "Q8_0"
            else:
                i, part = name.split(".")[2], name.split(".", 3)[3].removesuffix(".weight")
                gguf_name, type_name = f"blk.{i}.{names[part][0]}.weight", names[part][1]
            data, dequantised = _quantised(p.detach(), type_name)
            writer.add_tensor(gguf_name, data, raw_dtype=GGMLQuantizationType[type_name])
            p.copy_(dequantised + (0.01 if name == perturb else 0.0))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / SOURCE_MARKER).write_text(json.dumps({"gguf": str(tmp_path / "tiny.gguf"), "key": "test"}))
    return tmp_path / "hf"


def stored_as(weight, bits: int) -> bool:
    """Whether a linear's weight is held in `bits`-bit levels, by the kernel the loader uses here: the integer
    dot-product kernel where it builds (models/int_dot.py), else PyTorch's int4 / int8 kernels."""
    if int_dot.int_dot_available():
        return isinstance(weight, IntDotWeight) and weight.bits == bits
    return isinstance(weight, Int4Weight if bits == 4 else Int8Weight)


IDS = torch.arange(3, 43)
TEXT = ("Return the number of items in the queue. The count is taken under the lock, so it is exact at the moment "
        "of the call, but other threads may add or remove items before the caller reads it.")
WHOLE = ForwardBatch([0], [0], [len(IDS)])


@torch.inference_mode()
def test_gguf_weights_load_as_the_file_stores_them(tmp_path):
    model_dir = gguf_checkpoint(tmp_path)
    model = load_model(model_dir, weights="gguf")
    assert model.gguf_source == tmp_path / "tiny.gguf"
    for block in model.blocks:
        assert stored_as(block.qkv.quantized, 4) and stored_as(block.gate_up.quantized, 4)
        assert stored_as(block.o_proj.quantized, 4) and stored_as(block.down.quantized, 8)
    assert stored_as(model.lm_head.quantized, 8)
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    fp32 = load_model(model_dir)
    reference, logits = fp32(IDS, WHOLE), model(IDS, WHOLE)
    assert logits.dtype == torch.float32
    # the int4 levels are the checkpoint's own; what differs: rounded activations (bf16, or int8 per 32 in the
    # integer dot-product kernel), bf16 scales, int8 rows of Q8_0
    assert ((logits - reference).norm() / reference.norm()).item() < 0.02
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean().item() >= 0.9


@torch.inference_mode()
def test_gguf_weights_use_pytorch_kernels_when_the_int_dot_kernel_is_off(tmp_path, monkeypatch):
    model_dir = gguf_checkpoint(tmp_path)
    monkeypatch.setenv(int_dot.DISABLE_ENV, "0")
    monkeypatch.setattr(int_dot, "int_dot_available", int_dot.int_dot_available.__wrapped__)
    model = load_model(model_dir, weights="gguf")
    assert isinstance(model.blocks[0].qkv.quantized, Int4Weight) and isinstance(model.lm_head.quantized, Int8Weight)
    reference = load_model(model_dir)(IDS, WHOLE)
    assert ((model(IDS, WHOLE) - reference).norm() / reference.norm()).item() < 0.02


def test_a_gguf_file_that_does_not_match_the_checkpoint_is_refused(tmp_path):
    model_dir = gguf_checkpoint(tmp_path, perturb="model.layers.1.self_attn.o_proj.weight")
    with pytest.raises(StitchError, match=r"tiny.gguf does not hold the weights of this checkpoint \(blocks.1.o_proj"):
        load_model(model_dir, weights="gguf")


def test_a_gguf_file_of_another_shape_is_refused(tmp_path):
    gguf_checkpoint(tmp_path)
    other = tmp_path / "other"
    save_tiny_hf_model(other, "qwen2", hidden_size=32, intermediate_size=128)
    (other / SOURCE_MARKER).write_text(json.dumps({"gguf": str(tmp_path / "tiny.gguf"), "key": "test"}))
    with pytest.raises(StitchError, match=r"does not hold the weights of this checkpoint \(blocks.0.qkv.weight is "
                                          r"\(64, 32\), the file's \(128, 64\)\)"):
        load_model(other, weights="gguf")


def test_a_broken_gguf_file_is_a_one_line_error(tmp_path):
    save_tiny_hf_model(tmp_path, "qwen2")
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + bytes(20))
    (tmp_path / SOURCE_MARKER).write_text(json.dumps({"gguf": str(tmp_path / "broken.gguf"), "key": "test"}))
    with pytest.raises(StitchError, match=r"^cannot read GGUF .*broken.gguf: [^\n]*$"):
        load_model(tmp_path, weights="gguf")


def test_gguf_weights_without_a_gguf_source_load_in_fp32(tmp_path, caplog):
    save_tiny_hf_model(tmp_path, "qwen2")
    with caplog.at_level(logging.WARNING):
        model = load_model(tmp_path, weights="gguf")
    assert "did not come from a GGUF file" in caplog.text
    assert model.gguf_source is None and all(m.quantized is None for m in model.blocks.modules()
                                             if hasattr(m, "quantized"))


@torch.inference_mode()
def test_the_embedded_smollm2_gguf_loads_level_for_level(smollm2):
    fp32, tokenizer, model_dir = smollm2
    model = load_model(model_dir, weights="gguf")  # refused if a level did not give back the checkpoint
    assert all(stored_as(m.quantized, 4) for b in model.blocks for m in (b.qkv, b.o_proj, b.gate_up, b.down))
    assert stored_as(model.lm_head.quantized, 8)  # Q8_0, tied to the embedding
    ids = torch.tensor(tokenizer(TEXT)["input_ids"])
    batch = ForwardBatch([0], [0], [len(ids)])
    reference, logits = fp32(ids, batch), model(ids, batch)
    # measured here: 0.015 on PyTorch's kernels (bf16 activations), 0.034 on the integer dot-product kernel (int8
    # activations per group of 32, as llama.cpp rounds them); top-1 1.0 and 0.93
    bound = 0.04 if int_dot.int_dot_available() else 0.03
    assert ((logits - reference).norm() / reference.norm()).item() < bound
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean().item() >= 0.9
