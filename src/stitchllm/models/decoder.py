"""DecoderModel: a Llama-family LLM exposed as separate pieces: embed, blocks[i], norm, head."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from stitchllm.models.batch import ForwardBatch
from stitchllm.models.block import DecoderBlock, RMSNorm
from stitchllm.models.config import ModelConfig
from stitchllm.models.kv_cache import KVCache
from stitchllm.models.linear import Linear, pack_linears
from stitchllm.models.quantized import quantize_linears, resolve_weight_format
from stitchllm.models.rope import RotaryTable


class DecoderModel(nn.Module):
    """The block runtime: callers (generation, stitched routes, the engine) compose the pieces as they need."""

    gguf_source: Path | None = None  # the GGUF file whose quantised weights this model holds (loader, --weights gguf)

    def __init__(self, config: ModelConfig, max_positions: int | None = None):
        super().__init__()
        self.config = config
        self.max_positions = max_positions or config.max_position_embeddings
        self.rotary = RotaryTable(config, self.max_positions)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(DecoderBlock(config, self.rotary) for _ in range(config.num_layers))
        self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:  # one matrix both reads tokens in and scores them out
            self.lm_head.weight = self.embed_tokens.weight

    # ---- the pieces ------------------------------------------------------------------------------

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [T] -> hidden [T, D] (in the model's dtype, whatever the table's: see prepack)."""
        return self.embed_tokens(ids).to(self.final_norm.weight.dtype)

    def norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> normalised [..., D] (the final norm, before the head)."""
        return self.final_norm(hidden)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """normalised hidden [..., D] -> logits [..., V]."""
        return self.lm_head(hidden)

    # ---- compositions ----------------------------------------------------------------------------

    def run_blocks(
        self,
        hidden: torch.Tensor,
        batch: ForwardBatch,
        cache: KVCache | None,
        first: int = 0,
        end: int | None = None,
    ) -> torch.Tensor:
        """Run blocks [first, end) on hidden [T, D] -> [T, D]."""
        end = self.config.num_layers if end is None else end
        for i in range(first, end):
            hidden = self.blocks[i](hidden, batch, cache.layer(i) if cache is not None else None)
        return hidden

    def residual_states(self, ids: torch.Tensor, batch: ForwardBatch, keep: set[int]) -> dict[int, torch.Tensor]:
        """One cache-free pass: the residual stream [T, D] after block k-1 for every k in `keep` (k = 0: the
        embeddings), and the final one (before the norm) under key num_layers. Stitched routes start from these
        states, and their teacher ends in the last one."""
        hidden = self.embed(ids)
        states = {0: hidden} if 0 in keep else {}
        for i, block in enumerate(self.blocks):
            hidden = block(hidden, batch)
            if i + 1 in keep:
                states[i + 1] = hidden
        states[self.config.num_layers] = hidden
        return states

    def forward(self, ids: torch.Tensor, batch: ForwardBatch, cache: KVCache | None = None) -> torch.Tensor:
        """Packed ids [T] -> logits [T, V] for every new token (full-sequence scoring or prefill)."""
        return self.head(self.norm(self.run_blocks(self.embed(ids), batch, cache)))

    def new_cache(self, num_slots: int, max_len: int, first: int = 0, end: int | None = None) -> KVCache:
        """A KV cache for blocks [first, end) in this model's dtype and device."""
        p = self.final_norm.weight
        return KVCache(self.config, num_slots, max_len, first, end, dtype=p.dtype, device=p.device)

    def prepack(self, matmul_dtype: torch.dtype = torch.float32, weights: str = "fp32") -> "DecoderModel":
        """Pre-pack every linear weight for fast CPU inference, its matmuls in `matmul_dtype` (see
        models/linear.py), or store it quantised (`weights` 'int8' / 'int4' / 'auto', see models/quantized.py),
        except the LM head's, which stays fp32; returns self. The packed or quantised forms replace the dense
        weights (one copy in memory): packing in bf16 (or quantising) and then in fp32 again gives the rounded
        weights.

        Why the head stays fp32: rounding the final hidden state and the vocabulary matrix to bf16 moves logits by
        enough to swap near-tied tokens. On the default family, bf16 heads made 2.0-3.4% of every route's greedy
        tokens differ from fp32, an fp32 head 0.6-1.0% (benchmarks/matmul_precision.py); `large`'s throughput did not
        show the cost (~4% of its FLOPs), `small`'s fell ~11% (docs/history/BENCHMARKS-smollm2.md, session 14). An
        int8 head is no better (its kernel takes and returns bf16): on SmolLM2-135M it alone made 4.4% of the
        top-1 tokens differ from fp32; with int8 blocks, 5.9% against 3.2% with an fp32 head (1024 tokens).
        `weights` 'gguf' is the exception: the head is stored as its GGUF file stores it (Q6_K or Q8_0, into int8,
        as llama.cpp serves it), and the held-out perplexity of that format includes it (docs/BENCHMARKS.md)."""
        fmt = resolve_weight_format(weights, matmul_dtype)
        if fmt == "gguf" and self.gguf_source is not None:
            # the loader stored every linear as the GGUF file does; the embedding table, read a row per token, is
            # kept in bf16 (the file's levels to a relative 2^-9): half the memory of fp32
            pack_linears(self, matmul_dtype, keep_fp32=(self.lm_head,), release=True, skip_quantized=True)
            if self.embed_tokens.weight.dtype == torch.float32:
                self.embed_tokens.weight = nn.Parameter(self.embed_tokens.weight.bfloat16(), requires_grad=False)
        elif fmt in ("fp32", "gguf"):  # gguf on a model with no GGUF source: nothing quantised to keep
            pack_linears(self, matmul_dtype, keep_fp32=(self.lm_head,), release=True)
        else:
            quantize_linears(self, fmt, keep_fp32=(self.lm_head,))
        return self

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device
