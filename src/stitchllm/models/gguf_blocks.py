"""A GGUF file's quantised weights, read as they are stored, for `--weights gguf` (models/loader.py).

Why: the family arrives as Q4_K_M GGUF files, and the fp32 checkpoint the runtime loads is their exact
de-quantisation. Re-quantising that to int4 by rounding (models/quantized.py) adds a second rounding on top of the
file's own: +5.4% held-out perplexity on Qwen2.5-Coder-1.5B. But the 4-bit GGUF types (Q4_0, Q4_1, Q4_K) store
every group of 32 weights as 16 evenly spaced levels, which is exactly what PyTorch's int4 CPU kernel computes:
w = (q - 8) * scale + zero per group of 32. So their blocks are carried over as they are, level for level; only the
scale and offset are rounded to bf16 (the kernel's own dtype, a relative 2^-9). The other types (Q5_0, Q6_K, Q8_0,
...) have more levels than int4 holds; the loader stores those in int8 per row instead.

The block layouts are ggml's (ggml-common.h); the tests check this decoding against the `gguf` package's own
de-quantisation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from stitchllm.errors import StitchError

GROUP = 32  # weights per int4 group: a Q4_0 / Q4_1 block, a Q4_K sub-block
SOURCE_MARKER = "stitchllm-source.json"  # written by loader.gguf_to_hf_dir next to the converted checkpoint

# the runtime's linears (hf_weights.load_hf_state_dict's names) -> the GGUF tensors stacked in them, per block
_BLOCK_PARTS = {"qkv": ("attn_q", "attn_k", "attn_v"), "o_proj": ("attn_output",), "gate_up": ("ffn_gate", "ffn_up"),
                "down": ("ffn_down",)}


def gguf_source(model_dir: Path) -> Path | None:
    """The GGUF file an HF directory was converted from (its marker says), if that file is still there."""
    marker = Path(model_dir) / SOURCE_MARKER
    if not marker.is_file():
        return None
    path = Path(json.loads(marker.read_text()).get("gguf", ""))
    return path if path.is_file() else None


def gguf_parts(name: str, tied: bool) -> tuple[str, ...]:
    """The GGUF tensors a runtime linear's weight (`blocks.3.qkv.weight`, `lm_head.weight`) is stacked from."""
    if name == "lm_head.weight":
        return ("token_embd.weight",) if tied else ("output.weight",)
    _, i, linear, _ = name.split(".")
    return tuple(f"blk.{i}.{part}.weight" for part in _BLOCK_PARTS[linear])


class GGUFWeights:
    """The quantised tensors of one GGUF file, by GGUF name (memory-mapped: a tensor is read when decoded)."""

    def __init__(self, path: Path):
        from gguf import GGUFReader

        self.path = path
        try:
            reader = GGUFReader(path)
        except (ValueError, OSError) as exc:  # truncated or not a GGUF file
            raise StitchError(f"cannot read GGUF {path}: {exc}".splitlines()[0]) from exc
        self._tensors = {t.name: t for t in reader.tensors}
        self._row_orders = _llama_row_orders(reader)

    def stacked_levels(self, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The weight stacked from `names` as int4 levels, if every part is a 4-bit type: q [N, K] uint8 in [0, 15],
        scale and zero [N, K / 32] fp32, with w = (q - 8) * scale + zero. None if any part has another type."""
        parts = []
        for name in names:
            tensor = self._tensors.get(name)
            if tensor is None:
                raise StitchError(f"{self.path} has no tensor {name}: it is not the file this checkpoint came from")
            if tensor.tensor_type.name not in INT4_TYPES:
                return None
            rows = len(tensor.data)
            order = _rows(self._row_orders.get(name.split(".")[-2]), rows)
            parts.append([x[order] for x in int4_levels(tensor.tensor_type.name, np.asarray(tensor.data))])
        return tuple(torch.cat([p[i] for p in parts]) for i in range(3))


def int4_levels(type_name: str, data: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A tensor of 4-bit GGUF type `type_name` (one of INT4_TYPES), as stored: data [N, bytes a row] uint8 ->
    q [N, K] uint8 in [0, 15], scale and zero [N, K / 32] fp32, with w = (q - 8) * scale + zero."""
    rows = len(data)
    levels = _DECODERS[type_name](np.ascontiguousarray(data).reshape(-1, _BLOCK_BYTES[type_name]))
    return tuple(torch.from_numpy(x.reshape(rows, -1)) for x in levels)


def _llama_row_orders(reader) -> dict[str, int]:
    """llama.cpp's converter interleaves the rows of Llama's q and k projections (for its rotary layout);
    transformers' GGUF loader undoes it. Which tensors, and over how many heads: {'attn_q': heads, 'attn_k': kv}."""
    def field(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.parts[f.data[0]]

    arch = field("general.architecture")
    if arch is None or bytes(arch).decode() != "llama":
        return {}
    heads, kv = field("llama.attention.head_count"), field("llama.attention.head_count_kv")
    return {"attn_q": int(heads[0]), "attn_k": int((kv if kv is not None else heads)[0])}


def _rows(heads: int | None, rows: int) -> slice | np.ndarray:
    """The GGUF row each HF row comes from: per head, GGUF rows (2j, 2j+1) are HF rows (j, j + dim/2)."""
    if heads is None:
        return slice(None)
    dim = rows // heads // 2
    return np.arange(rows).reshape(heads, dim, 2).swapaxes(1, 2).reshape(-1)


def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """The fp16 field at byte `at` of each block [B, bytes] -> [B, 1] fp32."""
    return blocks[:, at:at + 2].copy().view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[B, 16] bytes -> [B, 32] levels: low nibbles are weights 0-15, high nibbles 16-31 (Q4_0 / Q4_1 layout)."""
    return np.concatenate([qs & 15, qs >> 4], axis=1)


def _q4_0(blocks: np.ndarray):
    # 18 bytes: d (fp16), 16 bytes of levels; w = d * (q - 8)
    d = _f16(blocks, 0)
    return _nibbles(blocks[:, 2:]), d, np.zeros_like(d)


def _q4_1(blocks: np.ndarray):
    # 20 bytes: d, m (fp16), 16 bytes of levels; w = d * q + m = (q - 8) * d + (m + 8d)
    d, m = _f16(blocks, 0), _f16(blocks, 2)
    return _nibbles(blocks[:, 4:]), d, m + 8 * d


def _q4_k(blocks: np.ndarray):
    # 144 bytes per 256 weights: d, dmin (fp16), 12 bytes of 6-bit sub-block scales and mins, 128 bytes of levels.
    # Sub-block j (32 weights): w = d * sc[j] * q - dmin * mn[j].
    d, dmin, packed, qs = _f16(blocks, 0), _f16(blocks, 2), blocks[:, 4:16], blocks[:, 16:]
    lo, hi = packed[:, :4], packed[:, 4:8]  # sub-blocks 0-3: the low 6 bits of scales (lo) and mins (hi)
    tail = packed[:, 8:]  # sub-blocks 4-7: low 4 bits here, top 2 bits in lo's / hi's spare bits
    sc = np.concatenate([lo & 63, (tail & 15) | ((lo >> 6) << 4)], axis=1).astype(np.float32)
    mn = np.concatenate([hi & 63, (tail >> 4) | ((hi >> 6) << 4)], axis=1).astype(np.float32)
    # levels: 4 chunks of 32 bytes; chunk c's low nibbles are sub-block 2c, its high nibbles sub-block 2c + 1
    chunks = qs.reshape(-1, 4, 1, 32)
    q = np.concatenate([chunks & 15, chunks >> 4], axis=2).reshape(-1, 256)
    scale = d * sc  # [B, 8]
    return q, scale, 8 * scale - dmin * mn


_DECODERS = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q4_K": _q4_k}
_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q4_K": 144}
INT4_TYPES = tuple(_DECODERS)
