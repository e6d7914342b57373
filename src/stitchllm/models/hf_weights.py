"""Explicit name mapping between Hugging Face Llama-family checkpoints and the runtime's fused layout."""

from __future__ import annotations

import torch

from stitchllm.errors import StitchError
from stitchllm.models.config import ModelConfig
from stitchllm.models.decoder import DecoderModel


def _hf_block(i: int, name: str) -> str:
    return f"model.layers.{i}.{name}"


def load_hf_state_dict(model: DecoderModel, hf: dict[str, torch.Tensor]) -> None:
    """Copy every HF tensor into the runtime model, fusing q/k/v and gate/up; checks every shape."""
    c = model.config
    ours: dict[str, torch.Tensor] = {"embed_tokens.weight": hf["model.embed_tokens.weight"]}
    for i in range(c.num_layers):
        get = lambda n: hf[_hf_block(i, n)]  # noqa: E731
        ours[f"blocks.{i}.attn_norm.weight"] = get("input_layernorm.weight")
        ours[f"blocks.{i}.qkv.weight"] = torch.cat([get(f"self_attn.{p}_proj.weight") for p in "qkv"])
        if c.qkv_bias:
            ours[f"blocks.{i}.qkv.bias"] = torch.cat([get(f"self_attn.{p}_proj.bias") for p in "qkv"])
        ours[f"blocks.{i}.o_proj.weight"] = get("self_attn.o_proj.weight")
        ours[f"blocks.{i}.mlp_norm.weight"] = get("post_attention_layernorm.weight")
        ours[f"blocks.{i}.gate_up.weight"] = torch.cat([get("mlp.gate_proj.weight"), get("mlp.up_proj.weight")])
        ours[f"blocks.{i}.down.weight"] = get("mlp.down_proj.weight")
    ours["final_norm.weight"] = hf["model.norm.weight"]
    if not c.tie_word_embeddings:
        ours["lm_head.weight"] = hf["lm_head.weight"]
    params = dict(model.named_parameters())
    missing = set(params) - set(ours)
    if missing:
        raise StitchError(f"checkpoint lacks tensors for {sorted(missing)[:3]}")
    with torch.no_grad():
        for name, tensor in ours.items():
            if params[name].shape != tensor.shape:
                raise StitchError(f"shape mismatch for {name}: model {tuple(params[name].shape)}, "
                                  f"checkpoint {tuple(tensor.shape)}")
            params[name].copy_(tensor)


def to_hf_state_dict(model: DecoderModel) -> dict[str, torch.Tensor]:
    """The inverse of load_hf_state_dict: split fused tensors back into HF names (for save_pretrained-style dirs)."""
    c = model.config
    out = {"model.embed_tokens.weight": model.embed_tokens.weight, "model.norm.weight": model.final_norm.weight}
    for i, block in enumerate(model.blocks):
        q, k, v = block.qkv.weight.split([c.q_size, c.kv_size, c.kv_size])
        out |= {
            _hf_block(i, "input_layernorm.weight"): block.attn_norm.weight,
            _hf_block(i, "self_attn.q_proj.weight"): q,
            _hf_block(i, "self_attn.k_proj.weight"): k,
            _hf_block(i, "self_attn.v_proj.weight"): v,
            _hf_block(i, "self_attn.o_proj.weight"): block.o_proj.weight,
            _hf_block(i, "post_attention_layernorm.weight"): block.mlp_norm.weight,
            _hf_block(i, "mlp.down_proj.weight"): block.down.weight,
        }
        if c.qkv_bias:
            qb, kb, vb = block.qkv.bias.split([c.q_size, c.kv_size, c.kv_size])
            out |= {_hf_block(i, f"self_attn.{p}_proj.bias"): t for p, t in zip("qkv", (qb, kb, vb))}
        gate, up = block.gate_up.weight.chunk(2)
        out |= {_hf_block(i, "mlp.gate_proj.weight"): gate, _hf_block(i, "mlp.up_proj.weight"): up}
    if not c.tie_word_embeddings:
        out["lm_head.weight"] = model.lm_head.weight
    return {name: t.detach().contiguous().cpu() for name, t in out.items()}


def check_config_matches(config: ModelConfig, hf_keys: set[str]) -> None:
    """Refuse a checkpoint whose layer count disagrees with its config before copying anything."""
    layers = {int(k.split(".")[2]) for k in hf_keys if k.startswith("model.layers.")}
    if layers and max(layers) + 1 != config.num_layers:
        raise StitchError(f"config says {config.num_layers} layers, checkpoint has {max(layers) + 1}")
