"""Family: a large and a small model that share one tokenizer, loaded together and fingerprinted."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from stitchllm.errors import StitchError
from stitchllm.models.decoder import DecoderModel
from stitchllm.models.loader import load_model, load_tokenizer, resolve_model_dir


def weights_fingerprint(model_dir: Path) -> str:
    """Config hash plus a cheap hash of the weights file (size, first and last MiB): stitches are tied to it."""
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for weights in sorted(model_dir.glob("*.safetensors")):
        size = weights.stat().st_size
        with weights.open("rb") as f:
            h.update(str(size).encode() + f.read(1 << 20))
            f.seek(max(0, size - (1 << 20)))
            h.update(f.read())
    return h.hexdigest()[:16]


@dataclass
class Family:
    """The two models every route is built from; `large` is the reference for quality and cost."""

    large: DecoderModel
    small: DecoderModel
    large_dir: Path
    small_dir: Path
    tokenizer: object

    def model(self, name: str) -> DecoderModel:
        return {"large": self.large, "small": self.small}[name]

    def fingerprint(self) -> dict[str, str]:
        return {"large": weights_fingerprint(self.large_dir), "small": weights_fingerprint(self.small_dir)}

    def small_block_map(self) -> list[int] | None:
        """When `small` was derived from `large` by `family derive`: the large block each small block came from."""
        from stitchllm.family.derive import MANIFEST

        manifest = self.small_dir / MANIFEST
        if not manifest.is_file():
            return None
        report = json.loads(manifest.read_text())
        blocks = report.get("kept", {}).get("blocks")
        derived_from_large = report.get("parent_fingerprint") == weights_fingerprint(self.large_dir)
        return blocks if derived_from_large and blocks and len(blocks) == self.small.config.num_layers else None


def load_family(large: str | Path = "default", small: str | Path | None = None, weights: str = "fp32") -> Family:
    """Load both models (block weights stored as `weights`, models/loader.py); refuses a pair whose tokenizers
    differ (their tokens would not mean the same)."""
    from stitchllm.family.derive import default_sibling_dir

    large_dir = resolve_model_dir(large)
    small_dir = resolve_model_dir(small if small is not None else default_sibling_dir())
    big, little = load_model(large_dir, weights=weights), load_model(small_dir, weights=weights)
    tok_large = load_tokenizer(large_dir, big.config.vocab_size)
    tok_small = load_tokenizer(small_dir, little.config.vocab_size)
    if big.config.vocab_size != little.config.vocab_size or tok_large.get_vocab() != tok_small.get_vocab():
        raise StitchError(f"tokenizer mismatch: {large_dir} and {small_dir} do not share one vocabulary")
    return Family(big, little, large_dir, small_dir, tok_large)
