"""Shared fixtures: tiny HF checkpoints built in the test, and the real embedded SmolLM2."""

from __future__ import annotations

import os

import pytest
import torch

from stitchllm.paths import kernels_home

# One build of the C++ kernels for the whole run, where the user's own runs keep theirs: the many tests that point
# STITCHLLM_HOME at a temporary directory (most run the CLI in a subprocess, which inherits this) would otherwise
# each compile them again, ~10 s a kernel.
os.environ.setdefault("STITCHLLM_KERNELS", str(kernels_home()))

def _bf16_reason() -> str:
    from stitchllm.models.cpu import cpu_features

    return f"this CPU ({cpu_features().describe()}) cannot run bf16 matmuls through oneDNN"


def needs_bf16(test):
    """Skip `test` (saying why) where oneDNN cannot run bf16 matmuls, e.g. an AVX2-only CPU."""
    from stitchllm.models.cpu import cpu_features

    return pytest.mark.skipif(not cpu_features().bf16_matmul, reason=_bf16_reason())(test)


TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)


def make_hf_config(model_type: str, **overrides):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[model_type]
    extra = {"sliding_window": None} if model_type == "mistral" else {}
    if model_type == "llama":  # exercise the Llama-3 frequency scaling rule
        extra["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 64}
    return cls(**(TINY | extra | overrides))


def save_tiny_hf_model(path, model_type: str, seed: int = 0, **overrides):
    """Save a random transformers model (every tensor random, biases included) as an HF directory."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(make_hf_config(model_type, **overrides))
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.08 * torch.randn_like(p))
    hf.eval().save_pretrained(path)
    return hf


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded SmolLM2-135M-Instruct: (runtime model, tokenizer, HF directory)."""
    from stitchllm.models.loader import load_model, load_tokenizer, resolve_model_dir

    model_dir = resolve_model_dir(None)
    model = load_model(model_dir)
    return model, load_tokenizer(model_dir, model.config.vocab_size), model_dir


def save_tiny_with_tokenizer(path, tokenizer_dir, seed: int = 0, **overrides):
    """A tiny random Llama that uses the real tokenizer in `tokenizer_dir` (SmolLM2's: 49,152 tokens, a chat
    template), so family tools see a real vocabulary."""
    import shutil

    save_tiny_hf_model(path, "llama", seed=seed, **(dict(
        vocab_size=49152, hidden_size=64, num_hidden_layers=4, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=1024, bos_token_id=1,
        eos_token_id=2, pad_token_id=2) | overrides))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, path / name)
    return path


@pytest.fixture(scope="session")
def tiny_parent_dir(tmp_path_factory, smollm2):
    """A tiny random Llama with SmolLM2's real tokenizer: the tiny families' large model."""
    return save_tiny_with_tokenizer(tmp_path_factory.mktemp("tiny-parent"), smollm2[2])


@pytest.fixture(scope="session")
def tiny_small_dir(tiny_parent_dir, tmp_path_factory):
    """A smaller random Llama with the same tokenizer, trained on nothing and derived from nothing: with the tiny
    parent, a family of two independent models (routes large and small) built in a second."""
    return save_tiny_with_tokenizer(tmp_path_factory.mktemp("tiny-small"), tiny_parent_dir, seed=1, hidden_size=32,
                                    num_hidden_layers=2, intermediate_size=64, num_attention_heads=2,
                                    num_key_value_heads=1)


@pytest.fixture(scope="session")
def tiny_sibling(tiny_parent_dir, tmp_path_factory):
    """A sibling derived from the tiny parent by the real pipeline (prune + 2 healing steps): (dir, report, cfg)."""
    from stitchllm.family.derive import DeriveConfig, derive
    from stitchllm.family.prune import PruneTarget

    out = tmp_path_factory.mktemp("sibling")
    cfg = DeriveConfig(parent=str(tiny_parent_dir), target=PruneTarget(layers=2, hidden=32, heads=2, kv_heads=1,
                       intermediate=48), calibration_tokens=2048, heal_tokens=4096)
    return out, derive(cfg, out), cfg


@pytest.fixture(scope="session")
def tiny_catalog(tiny_parent_dir, tiny_sibling, tmp_path_factory):
    """Tiny family with trained stitches at cuts 2 and 3 and a router trained on a few requests."""
    from stitchllm.family.family import load_family
    from stitchllm.routing.catalog import load_catalog
    from stitchllm.routing.router_model import load_router
    from stitchllm.routing.router_train import RouterTrainConfig, train_router
    from stitchllm.stitch.build import StitchBuildConfig, build_stitches
    from stitchllm.stitch.store import stitches_fingerprint
    from stitchllm.stitch.train import StitchTrainConfig

    family = load_family(tiny_parent_dir, tiny_sibling[0])
    stitch_dir = tmp_path_factory.mktemp("stitches")
    build_stitches(family, StitchBuildConfig(cuts=(2, 3), block_map=False, screen=False, calibration_tokens=4096,
                                             validation_tokens=1024, train=StitchTrainConfig(steps=3)), stitch_dir)
    catalog = load_catalog(str(tiny_parent_dir), str(tiny_sibling[0]), str(stitch_dir))
    router_dir = tmp_path_factory.mktemp("home") / "routers" / stitches_fingerprint(stitch_dir)
    train_router(catalog, stitch_dir, RouterTrainConfig(requests=48, epochs=50), router_dir)
    router, manifest = load_router(router_dir, family.fingerprint(), stitches_fingerprint(stitch_dir))
    return catalog, stitch_dir, router, manifest
