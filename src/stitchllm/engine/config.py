"""EngineConfig: batching, memory and routing settings of the serving engine, validated on creation."""

from __future__ import annotations

from dataclasses import dataclass, field

from stitchllm.errors import StitchError
from stitchllm.models.linear import resolve_matmul_dtype
from stitchllm.models.quantized import resolve_weight_format
from stitchllm.routing.controller import SLOConfig


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """`kv_budget_mb` (when set) decides how many sequences hold KV cache at once; otherwise `max_num_seqs`."""

    max_model_len: int = 1024
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 512  # one budget per step for prefill chunks and decode tokens together
    kv_budget_mb: float | None = None
    policy: str = "auto"  # auto (router + load controller), router, random, whole-model, fixed:<route>
    static_cost: float = 0.7  # target average cost for the non-adaptive policies (router, random, whole-model)
    slo: SLOConfig = field(default_factory=SLOConfig)
    seed: int = 0
    # the precision of every linear (models/linear.py): "float32" (exact), "bfloat16" (~1.9x faster matmuls on
    # CPUs with native bf16 dot products, ~100x slower on others), or "auto" (bf16 exactly where it is native)
    matmul_dtype: str = "float32"
    # how the models' block weights are stored (models/quantized.py): "fp32" (packed in matmul_dtype), "int8" / "int4"
    # (weight-only, bf16 activations), or "auto" (int8 where it was measured faster than the fp32 matmuls it replaces)
    weights: str = "fp32"

    def __post_init__(self) -> None:
        if self.max_model_len < 2:
            raise StitchError("max_model_len must be at least 2")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise StitchError("max_num_seqs and max_num_batched_tokens must be positive")
        resolve_weight_format(self.weights, resolve_matmul_dtype(self.matmul_dtype))  # one-line errors
        if self.kv_budget_mb is not None and self.kv_budget_mb <= 0:
            raise StitchError("kv_budget_mb must be positive")
