"""ModelConfig: the facts about a Llama-family decoder that the runtime needs, read from an HF config."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from stitchllm.errors import StitchError

# model_type -> whether q/k/v projections carry a bias. Everything else is shared by the family.
SUPPORTED_MODEL_TYPES = {"llama": False, "mistral": False, "qwen2": True}


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Shape and numerics of one decoder-only model; derived counts are properties, not stored twice."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    rope_parameters: dict[str, Any] = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise StitchError(
                f"unsupported architecture model_type={self.model_type!r}; "
                f"supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))}"
            )
        if self.num_heads % self.num_kv_heads:
            raise StitchError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if min(self.vocab_size, self.hidden_size, self.num_layers, self.num_heads, self.head_dim) <= 0:
            raise StitchError("model config has a non-positive size")

    @classmethod
    def from_hf(cls, hf: Any) -> "ModelConfig":
        """Read a transformers PretrainedConfig; the architecture comes from its `model_type`, nothing else."""
        model_type = getattr(hf, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise StitchError(
                f"unsupported architecture model_type={model_type!r}; "
                f"supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))}"
            )
        if getattr(hf, "hidden_act", "silu") != "silu":
            raise StitchError(f"unsupported activation {hf.hidden_act!r}: the runtime implements SwiGLU (silu)")
        rope = dict(getattr(hf, "rope_parameters", None) or {})
        rope.setdefault("rope_type", "default")
        rope.setdefault("rope_theta", getattr(hf, "rope_theta", 10000.0))
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        qkv_bias = SUPPORTED_MODEL_TYPES[model_type] or bool(getattr(hf, "attention_bias", False))
        return cls(
            model_type=model_type,
            vocab_size=hf.vocab_size,
            hidden_size=hf.hidden_size,
            num_layers=hf.num_hidden_layers,
            num_heads=hf.num_attention_heads,
            num_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
            head_dim=head_dim,
            intermediate_size=hf.intermediate_size,
            rms_norm_eps=hf.rms_norm_eps,
            max_position_embeddings=hf.max_position_embeddings,
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            rope_parameters=rope,
        )

    # ---- derived facts -------------------------------------------------------------------------

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def block_params(self) -> int:
        """Parameters of one decoder block (attention + MLP + two norms)."""
        d = self.hidden_size
        attn = d * (self.q_size + 2 * self.kv_size) + self.q_size * d
        if self.qkv_bias:
            attn += self.q_size + 2 * self.kv_size
        mlp = 3 * d * self.intermediate_size
        return attn + mlp + 2 * d

    @property
    def embedding_params(self) -> int:
        """Input embedding plus, when untied, the LM head."""
        per_table = self.vocab_size * self.hidden_size
        return per_table if self.tie_word_embeddings else 2 * per_table

    @property
    def non_embedding_params(self) -> int:
        return self.num_layers * self.block_params + self.hidden_size  # blocks + final norm

    @property
    def total_params(self) -> int:
        return self.embedding_params + self.non_embedding_params

    @property
    def block_flops_per_token(self) -> int:
        """Matmul FLOPs of one block for one token, context-independent part (2 per multiply-add)."""
        return 2 * (self.block_params - 2 * self.hidden_size)

    @property
    def norm_and_head_params(self) -> int:
        """What sampling reads once per step: the final norm and the LM head (tied or not)."""
        return (self.vocab_size + 1) * self.hidden_size

    @property
    def head_flops_per_token(self) -> int:
        return 2 * self.vocab_size * self.hidden_size

    @property
    def flops_per_token(self) -> int:
        """Forward FLOPs per token: all blocks plus the LM head (attention over context not included)."""
        return self.num_layers * self.block_flops_per_token + self.head_flops_per_token

    @property
    def kv_bytes_per_token_per_layer(self) -> int:
        return 2 * self.kv_size * 4  # K and V, fp32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """A short hash of the config, used to tie stitches and routers to the models they were made for."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
