"""Write a runtime model as a standard HF directory that transformers' AutoModelForCausalLM loads as it is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import save_file

from stitchllm.models.decoder import DecoderModel
from stitchllm.models.hf_weights import to_hf_state_dict

# Files of the parent directory that are not weights or config: the tokenizer, chat template, generation defaults.
WEIGHT_OR_CONFIG = {"config.json", "model.safetensors", "model.safetensors.index.json", "stitchllm-source.json"}


def save_hf_dir(model: DecoderModel, out: Path, parent_dir: Path) -> None:
    """config.json (the parent's, resized), model.safetensors, and the parent's tokenizer files copied verbatim."""
    out.mkdir(parents=True, exist_ok=True)
    c = model.config
    hf_config = json.loads((parent_dir / "config.json").read_text())
    hf_config.update(hidden_size=c.hidden_size, num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
                     num_key_value_heads=c.num_kv_heads, intermediate_size=c.intermediate_size, head_dim=c.head_dim)
    hf_config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(hf_config, indent=2))
    save_file(to_hf_state_dict(model), out / "model.safetensors", metadata={"format": "pt"})
    for f in parent_dir.iterdir():
        if f.is_file() and f.name not in WEIGHT_OR_CONFIG and not f.name.startswith("."):
            shutil.copy2(f, out / f.name)
