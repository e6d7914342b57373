"""Causal self-attention over packed variable-length sequences, reading keys/values from the KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stitchllm.models.batch import ForwardBatch
from stitchllm.models.decode_kernel import MAX_GROUP, decode_attention_kernel
from stitchllm.models.decode_layout import DecodeLayout


def _causal_mask(num_new: int, start: int, device: torch.device) -> torch.Tensor:
    """[n, start+n] bool: new token i (at position start+i) may see keys at positions <= start+i."""
    rows = torch.arange(num_new, device=device)[:, None] + start
    cols = torch.arange(start + num_new, device=device)[None, :]
    return cols <= rows


def _attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
    """q [H, n, hd] against k, v [kv, start+n, hd] -> [H, n, hd]; grouped-query heads share keys natively."""
    n = q.shape[1]
    if n == 1:  # decode: the one new token sees everything before it, no mask needed
        mask, causal = None, False
    elif start == 0:  # a fresh prefill: plain causal
        mask, causal = None, True
    else:  # a prefill chunk after cached tokens: causal with an offset
        mask, causal = _causal_mask(n, start, q.device), False
    out = F.scaled_dot_product_attention(
        q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), attn_mask=mask, is_causal=causal, enable_gqa=True
    )
    return out[0]


def _decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, batch: ForwardBatch
) -> torch.Tensor:
    """Sequences that each bring one token (q [B, H, hd]): one call for them all, each reading only its own keys
    with the CPU kernel (models/decode_kernel.py), else one padded SDPA call."""
    fits = q.device.type == "cpu" and q.dtype == torch.float32 and q.shape[1] // k_cache.shape[1] <= MAX_GROUP
    kernel = decode_attention_kernel() if fits else None
    if kernel is None:
        return _sdpa_decode_attention(q, k_cache, v_cache, batch.decode_layout())
    slots, lengths = batch.decode_rows()
    return kernel(q, k_cache, v_cache, slots, lengths, q.shape[-1] ** -0.5)


def _sdpa_decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, layout: DecodeLayout
) -> torch.Tensor:
    """Decode attention with PyTorch's SDPA: q [B, H, hd]; caches [slots, kv, max_len, hd].

    Keys are read up to the longest context among them, masked for the shorter ones (over decode keys only).
    Query heads are viewed as [kv, G] so each group of G heads meets its shared key head without copying keys.
    """
    B, H, hd = q.shape
    kv_heads = k_cache.shape[1]
    k, v = layout.cache_view(k_cache), layout.cache_view(v_cache)  # [span, kv, L, hd]
    if not layout.in_order:
        q = q.new_zeros(layout.span, H, hd).index_copy_(0, layout.rows, q)
    out = F.scaled_dot_product_attention(q.view(layout.span, kv_heads, H // kv_heads, hd), k, v,
                                         attn_mask=layout.mask).view(layout.span, H, hd)
    return out if layout.in_order else out.index_select(0, layout.rows)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: ForwardBatch,
    kv_cache: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """q [T, H, hd], k/v [T, kv, hd] of the new tokens -> attention output [T, H, hd].

    With a cache ([slots, kv, max_len, hd] each), the new keys/values are written at their positions and each
    sequence attends over its cached prefix plus its new tokens. Without one (training, full-sequence scoring),
    every sequence must start at position 0 and attends causally over its own new tokens.
    Prefill chunks are handled one by one on zero-copy views (no padding); single-token (decode) sequences go
    through one batched call.
    """
    if kv_cache is not None:
        k_cache, v_cache = kv_cache
        # advanced indices split by a slice: the indexed view is [T, kv, hd], matching k and v
        k_cache[batch.token_slots, :, batch.positions] = k
        v_cache[batch.token_slots, :, batch.positions] = v
        if batch.is_decode:
            return _decode_attention(q, k_cache, v_cache, batch)
    elif any(batch.starts):
        raise ValueError("attention without a KV cache needs every sequence to start at position 0")
    out = torch.empty_like(q)
    offsets = [0] + torch.tensor(batch.lengths).cumsum(0).tolist()[:-1]
    single = [i for i, n in enumerate(batch.lengths) if n == 1]
    if kv_cache is not None and len(single) > 1:  # decode tokens among prefill chunks: one call for them all
        rows = torch.tensor([offsets[i] for i in single], device=q.device)
        out[rows] = _decode_attention(q[rows], k_cache, v_cache, batch)
    batched_decode = kv_cache is not None and len(single) > 1
    for i, (slot, start, n) in enumerate(zip(batch.slots, batch.starts, batch.lengths)):
        if batched_decode and n == 1:
            continue
        offset = offsets[i]
        q_seq = q[offset : offset + n].transpose(0, 1)  # [H, n, hd]
        if kv_cache is not None:
            k_seq = k_cache[slot, :, : start + n]  # [kv, start+n, hd], a view of the cache
            v_seq = v_cache[slot, :, : start + n]
        else:
            k_seq = k[offset : offset + n].transpose(0, 1)
            v_seq = v[offset : offset + n].transpose(0, 1)
        out[offset : offset + n] = _attend_one(q_seq, k_seq, v_seq, start).transpose(0, 1)
    return out
