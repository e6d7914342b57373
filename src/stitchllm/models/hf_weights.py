"""Explicit name mapping between Hugging Face Llama-family checkpoints and the runtime's fused layout."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from stitchllm.errors import StitchError
from stitchllm.models.config import ModelConfig
from stitchllm.models.decoder import DecoderModel


def _hf_block(i: int, name: str) -> str:
    return f"model.layers.{i}.{name}"


def load_hf_state_dict(model: DecoderModel, hf: Mapping[str, torch.Tensor],
                       loaded: Callable[[str], None] | None = None) -> None:
    """Copy every HF tensor into the runtime model, fusing q/k/v and gate/up (stacked along dim 0); checks every
    shape. Where `hf` can read a tensor straight into a given buffer (`read_into`, as SafetensorsCheckpoint
    does), each lands in its place in the model without a temporary copy: loading then holds the model alone.
    `loaded(name)` is called once each parameter is in place: the head first, and a linear's bias before its
    weight, so a caller can pack a linear the moment its weight arrives."""
    c = model.config
    ours: dict[str, list[str]] = {}  # ours <- HF parts, stacked
    if not c.tie_word_embeddings:
        ours["lm_head.weight"] = ["lm_head.weight"]
    ours["embed_tokens.weight"] = ["model.embed_tokens.weight"]
    for i in range(c.num_layers):
        b = lambda n: _hf_block(i, n)  # noqa: E731
        ours[f"blocks.{i}.attn_norm.weight"] = [b("input_layernorm.weight")]
        if c.qkv_bias:
            ours[f"blocks.{i}.qkv.bias"] = [b(f"self_attn.{p}_proj.bias") for p in "qkv"]
        ours[f"blocks.{i}.qkv.weight"] = [b(f"self_attn.{p}_proj.weight") for p in "qkv"]
        ours[f"blocks.{i}.o_proj.weight"] = [b("self_attn.o_proj.weight")]
        ours[f"blocks.{i}.mlp_norm.weight"] = [b("post_attention_layernorm.weight")]
        ours[f"blocks.{i}.gate_up.weight"] = [b("mlp.gate_proj.weight"), b("mlp.up_proj.weight")]
        ours[f"blocks.{i}.down.weight"] = [b("mlp.down_proj.weight")]
    ours["final_norm.weight"] = ["model.norm.weight"]
    params = dict(model.named_parameters())
    missing = set(params) - set(ours)
    if missing:
        raise StitchError(f"checkpoint lacks tensors for {sorted(missing)[:3]}")
    read_into = getattr(hf, "read_into", None)
    with torch.no_grad():
        for name, parts in ours.items():
            absent = [p for p in parts if p not in hf]
            if absent:
                raise StitchError(f"checkpoint lacks tensor {absent[0]}")
            shapes = [tuple(hf_shape(hf, p)) for p in parts]
            stacked = (sum(s[0] for s in shapes), *shapes[0][1:]) if len({s[1:] for s in shapes}) == 1 else None
            param = params.pop(name)  # dropped once filled: `loaded` may replace it (a packed form), freeing it
            if stacked is None or param.shape != stacked:
                raise StitchError(f"shape mismatch for {name}: model {tuple(param.shape)}, "
                                  f"checkpoint {' + '.join(str(s) for s in shapes)}")
            row = 0
            for part, shape in zip(parts, shapes):
                dest = param[row:row + shape[0]]
                if read_into is not None and dest.dtype == hf_dtype(hf, part):
                    read_into(part, dest)
                else:
                    dest.copy_(hf[part])
                row += shape[0]
            del param, dest
            if loaded is not None:
                loaded(name)


def hf_shape(hf: Mapping[str, torch.Tensor], name: str) -> torch.Size:
    """A checkpoint tensor's shape without reading it, where the checkpoint can say."""
    return hf.shape(name) if hasattr(hf, "shape") else hf[name].shape


def hf_dtype(hf: Mapping[str, torch.Tensor], name: str) -> torch.dtype:
    return hf.dtype(name) if hasattr(hf, "dtype") else hf[name].dtype


def to_hf_state_dict(model: DecoderModel) -> dict[str, torch.Tensor]:
    """The inverse of load_hf_state_dict: split fused tensors back into HF names (for save_pretrained-style dirs)."""
    c = model.config
    out = {"model.embed_tokens.weight": model.embed_tokens.weight, "model.norm.weight": model.final_norm.weight}
    for i, block in enumerate(model.blocks):
        q, k, v = block.qkv.dense_weight().split([c.q_size, c.kv_size, c.kv_size])
        out |= {
            _hf_block(i, "input_layernorm.weight"): block.attn_norm.weight,
            _hf_block(i, "self_attn.q_proj.weight"): q,
            _hf_block(i, "self_attn.k_proj.weight"): k,
            _hf_block(i, "self_attn.v_proj.weight"): v,
            _hf_block(i, "self_attn.o_proj.weight"): block.o_proj.dense_weight(),
            _hf_block(i, "post_attention_layernorm.weight"): block.mlp_norm.weight,
            _hf_block(i, "mlp.down_proj.weight"): block.down.dense_weight(),
        }
        if c.qkv_bias:
            qb, kb, vb = block.qkv.bias.split([c.q_size, c.kv_size, c.kv_size])
            out |= {_hf_block(i, f"self_attn.{p}_proj.bias"): t for p, t in zip("qkv", (qb, kb, vb))}
        gate, up = block.gate_up.dense_weight().chunk(2)
        out |= {_hf_block(i, "mlp.gate_proj.weight"): gate, _hf_block(i, "mlp.up_proj.weight"): up}
    if not c.tie_word_embeddings:
        out["lm_head.weight"] = model.lm_head.dense_weight()
    return {name: t.detach().contiguous().cpu() for name, t in out.items()}


def check_config_matches(config: ModelConfig, hf_keys: set[str]) -> None:
    """Refuse a checkpoint whose layer count disagrees with its config before copying anything."""
    layers = {int(k.split(".")[2]) for k in hf_keys if k.startswith("model.layers.")}
    if layers and max(layers) + 1 != config.num_layers:
        raise StitchError(f"config says {config.num_layers} layers, checkpoint has {max(layers) + 1}")
