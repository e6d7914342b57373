"""`family derive`: prune a parent into a smaller same-tokenizer sibling, heal it by distillation, save it HF-style."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from stitchllm.data.corpus import python_docs_text
from stitchllm.errors import StitchError
from stitchllm.eval.perplexity import model_full_logits, perplexity
from stitchllm.eval.text import token_windows
from stitchllm.family.distill import DistillConfig, distill
from stitchllm.family.family import weights_fingerprint
from stitchllm.family.importance import check_block_criterion, measure_importance
from stitchllm.family.prune import PruneTarget, prune
from stitchllm.models.config import ModelConfig
from stitchllm.models.linear import resolve_matmul_dtype
from stitchllm.models.loader import load_model, load_tokenizer, resolve_model_dir
from stitchllm.models.save import save_hf_dir
from stitchllm.paths import stitchllm_home
from stitchllm.routing.route import block_map_cuts, entry_after

MANIFEST = "stitchllm-derive.json"


@dataclass(frozen=True, slots=True)
class DeriveConfig:
    """Everything that determines a derived sibling; its hash names the cache entry."""

    parent: str = "default"
    target: PruneTarget = PruneTarget(layers=15, hidden=576, heads=9, kv_heads=3, intermediate=1536)
    calibration_tokens: int = 16384
    heal_tokens: int = 262144
    seed: int = 0
    text: str | None = None  # a user's own text file instead of the stdlib docstrings
    train_dtype: str = "auto"  # healing's matmul precision: auto = bf16 where the CPU has native bf16 dot products
    block_importance: str = "skip-nll"  # which blocks to keep: family/importance.py (BLOCK_CRITERIA)
    route_healing: float = 1.0  # weight of the stitched routes' KL while healing (0: heal the sibling alone)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def default_sibling_dir() -> Path:
    return stitchllm_home() / "family" / "smollm2-135m-instruct-sibling"


def is_complete(out: Path, cfg: DeriveConfig) -> bool:
    manifest = out / MANIFEST
    return manifest.is_file() and json.loads(manifest.read_text()).get("fingerprint") == cfg.fingerprint()


def _train_and_validation_text(cfg: DeriveConfig) -> tuple[str, str]:
    if cfg.text is None:
        return python_docs_text("train"), python_docs_text("validation")
    from stitchllm.eval.text import read_text

    text = read_text(cfg.text)
    cut = int(len(text) * 0.9)  # a user's file: the last 10% validates
    return text[:cut], text[cut:]


def healing_routes(parent: ModelConfig, child: ModelConfig, blocks: list[int]) -> list[tuple[int, int]]:
    """The stitched routes serving will consider on a sibling pruned in depth, as (cut, entry): cut just before a
    kept block and enter at it (`block_map_cuts`). Their stitch starts as the identity, so healing can train them
    as they are; a sibling pruned in width has none (the streams differ)."""
    if parent.hidden_size != child.hidden_size:
        return []
    configs = {"large": parent, "small": child}
    return [(k, entry_after(k, blocks)) for k in block_map_cuts(configs, blocks)]


def derive(cfg: DeriveConfig, out: Path, heal: bool = True) -> dict:
    """Build the sibling into `out` (skipped when `out` already holds this exact recipe); returns its manifest."""
    if is_complete(out, cfg):
        return json.loads((out / MANIFEST).read_text())
    started = time.perf_counter()
    dtype = resolve_matmul_dtype(cfg.train_dtype)  # an unknown name fails before any model loads
    check_block_criterion(cfg.block_importance)  # so does this one
    torch.manual_seed(cfg.seed)
    parent_dir = resolve_model_dir(cfg.parent)
    parent = load_model(parent_dir)
    cfg.target.check_against(parent.config)
    tokenizer = load_tokenizer(parent_dir, parent.config.vocab_size)
    train_text, val_text = _train_and_validation_text(cfg)
    train_ids = torch.tensor(tokenizer(train_text, add_special_tokens=False)["input_ids"])
    val_windows = token_windows(val_text, tokenizer, window=512, max_tokens=16384)
    if len(train_ids) < cfg.calibration_tokens:
        raise StitchError(f"calibration needs {cfg.calibration_tokens} tokens, the text has {len(train_ids)}")
    calib = list(train_ids[: cfg.calibration_tokens].split(512))
    importance = measure_importance(parent, calib, cfg.block_importance)
    child, kept = prune(parent, importance, cfg.target)
    report = {"fingerprint": cfg.fingerprint(), "recipe": asdict(cfg), "kept": kept,
              "block_importance": [round(float(v), 6) for v in importance.block],
              "parent_fingerprint": weights_fingerprint(parent_dir),
              "val_ppl": {"parent": perplexity(model_full_logits(parent), val_windows).ppl,
                          "pruned": perplexity(model_full_logits(child), val_windows).ppl}}
    if heal and cfg.heal_tokens > 0:
        parent.prepack(dtype)  # the teacher only runs inference: its linears in the same precision (head fp32)
        dcfg = DistillConfig(steps=max(1, cfg.heal_tokens // (8 * 256)), seed=cfg.seed,
                             matmul_dtype=cfg.train_dtype, route_weight=cfg.route_healing)
        out.mkdir(parents=True, exist_ok=True)
        report["distill"] = distill(parent, child, train_ids[cfg.calibration_tokens:], dcfg,
                                    checkpoint=out / f".distill-{cfg.fingerprint()}.pt",
                                    routes=healing_routes(parent.config, child.config, kept["blocks"]))
        report["val_ppl"]["healed"] = perplexity(model_full_logits(child.prepack()), val_windows).ppl
    report["seconds"] = round(time.perf_counter() - started, 1)
    save_hf_dir(child, out, parent_dir)
    (out / MANIFEST).write_text(json.dumps(report, indent=2))
    for stale in out.glob(".distill-*.pt"):
        stale.unlink()
    return report
