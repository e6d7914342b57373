"""Deriving a smaller sibling: sizes as requested, tokenizer kept, HF round trip, bad requests refused."""

import dataclasses
import json

import pytest
import torch
from conftest import needs_bf16

from stitchllm.data.corpus import python_docs_text
from stitchllm.errors import StitchError
from stitchllm.eval.perplexity import model_full_logits, perplexity
from stitchllm.family.derive import derive
from stitchllm.family.importance import block_skip_damage, measure_importance
from stitchllm.family.prune import PruneTarget, prune
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.loader import load_config, load_model, load_tokenizer



@pytest.fixture(scope="module")
def derived(tiny_sibling):
    return tiny_sibling


def test_sizes_requested_are_sizes_produced(derived):
    out, report, _ = derived
    c = load_config(out)
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.intermediate_size) == (2, 32, 2, 1, 48)
    assert c.head_dim == 16  # the parent's head_dim: whole heads are removed, never resized
    assert len(report["kept"]["blocks"]) == 2 and report["kept"]["blocks"] == sorted(report["kept"]["blocks"])


def test_tokenizer_and_vocab_are_kept(derived, tiny_parent_dir):
    out, _, _ = derived
    assert load_config(out).vocab_size == load_config(tiny_parent_dir).vocab_size
    a, b = load_tokenizer(out), load_tokenizer(tiny_parent_dir)
    text = "Stitching needs one shared tokenizer: <|im_start|>user"
    assert a(text)["input_ids"] == b(text)["input_ids"] and len(a) == len(b)


def test_derived_dir_round_trips_through_transformers(derived):
    from transformers import AutoModelForCausalLM

    out, _, _ = derived
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ours = load_model(out)
    ids = torch.randint(0, 49152, (20,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(ids[None]).logits[0]
    torch.testing.assert_close(ours(ids, ForwardBatch([0], [0], [20])), expected, atol=1e-4, rtol=0)


def test_healing_lowers_validation_perplexity(derived):
    _, report, _ = derived
    ppl = report["val_ppl"]
    assert report["distill"]["steps"] == 2
    assert ppl["healed"] < ppl["pruned"]


def test_rerun_is_cached(derived):
    out, report, cfg = derived
    assert derive(cfg, out) == report
    assert json.loads((out / "stitchllm-derive.json").read_text())["fingerprint"] == cfg.fingerprint()


@pytest.mark.parametrize("target, message", [
    (PruneTarget(layers=5, hidden=32, heads=2, kv_heads=1, intermediate=48), "--layers 5 is not in"),
    (PruneTarget(layers=2, hidden=30, heads=4, kv_heads=2, intermediate=48), "not divisible by --heads"),
    (PruneTarget(layers=2, hidden=64, heads=8, kv_heads=2, intermediate=48), "--heads 8 is not in"),
])
def test_bad_requests_are_refused(tiny_parent_dir, target, message):
    with pytest.raises(StitchError, match=message):
        target.check_against(load_config(tiny_parent_dir))


@needs_bf16
def test_bf16_healing_tracks_fp32(tiny_parent_dir, tiny_sibling):
    """Healing under bf16 autocast (the default where the CPU has native bf16) learns as fp32 does."""
    from stitchllm.data.corpus import python_docs_text
    from stitchllm.family.distill import DistillConfig, distill

    teacher = load_model(tiny_parent_dir)
    tok = load_tokenizer(tiny_parent_dir)
    ids = torch.tensor(tok(python_docs_text("train")[:40000], add_special_tokens=False)["input_ids"][:8192])
    kl = {}
    for dtype in ("float32", "bfloat16"):
        student = load_model(tiny_sibling[0])
        cfg = DistillConfig(steps=6, batch=4, micro_batch=2, seq_len=128, lr=1e-3, warmup=1, matmul_dtype=dtype)
        report = distill(teacher, student, ids, cfg)
        kl[dtype] = (report["kl_first"], report["kl_last"])
    assert kl["float32"][1] < kl["float32"][0] and kl["bfloat16"][1] < kl["bfloat16"][0]
    assert kl["bfloat16"][0] == pytest.approx(kl["float32"][0], rel=0.02)
    assert kl["bfloat16"][1] == pytest.approx(kl["float32"][1], rel=0.05)


def test_unknown_training_precision_is_refused(tiny_parent_dir, tmp_path):
    from stitchllm.family.derive import DeriveConfig

    with pytest.raises(StitchError, match="unknown matmul dtype 'fp8'"):
        derive(DeriveConfig(parent=str(tiny_parent_dir), train_dtype="fp8"), tmp_path / "out")


def test_block_skip_damage_is_the_nll_rise_of_the_model_without_that_block(tiny_parent_dir):
    """Skipping block i in the forward pass scores exactly as the pruned model that lacks it (two code paths)."""
    parent, tok = load_model(tiny_parent_dir), load_tokenizer(tiny_parent_dir)
    windows = list(torch.tensor(tok(python_docs_text("train")[:20000], add_special_tokens=False)["input_ids"][:1024])
                   .split(256))
    damage, base = block_skip_damage(parent, windows), perplexity(model_full_logits(parent), windows)
    c = parent.config
    importance = measure_importance(parent, windows, "cosine")  # only the finer parts matter here: full width
    for i in range(c.num_layers):
        all_but_i = torch.ones(c.num_layers).index_fill_(0, torch.tensor([i]), -1.0)
        child, _ = prune(parent, dataclasses.replace(importance, block=all_but_i), PruneTarget(
            c.num_layers - 1, c.hidden_size, c.num_heads, c.num_kv_heads, c.intermediate_size))
        without = perplexity(model_full_logits(child), windows)
        assert float(damage[i]) == pytest.approx(without.nll / without.tokens - base.nll / base.tokens, abs=1e-4)
    assert damage.abs().min() > 1e-4  # every block of the random parent matters a little: the check has teeth


def test_derive_keeps_the_blocks_whose_skip_hurts_most(derived, tiny_parent_dir):
    _, report, cfg = derived
    parent, tok = load_model(tiny_parent_dir), load_tokenizer(tiny_parent_dir)
    ids = torch.tensor(tok(python_docs_text("train"), add_special_tokens=False)["input_ids"][:cfg.calibration_tokens])
    damage = block_skip_damage(parent, list(ids.split(512)))
    assert report["block_importance"] == pytest.approx(damage.tolist(), abs=1e-5)
    assert report["kept"]["blocks"] == sorted(damage.topk(cfg.target.layers).indices.tolist())


def test_unknown_block_importance_is_refused(tiny_parent_dir, tmp_path):
    from stitchllm.family.derive import DeriveConfig

    with pytest.raises(StitchError, match="unknown block importance 'random'"):
        derive(DeriveConfig(parent=str(tiny_parent_dir), block_importance="random"), tmp_path / "out")


def test_a_short_healing_run_reaches_its_peak_lr():
    from stitchllm.family.distill import DistillConfig

    short, default = DistillConfig(steps=2), DistillConfig(steps=128)
    assert short.lr_at(0) == pytest.approx(short.lr)  # warm-up is capped at a quarter of the run: none for 2 steps
    assert default.lr_at(0) == pytest.approx(default.lr / 8) and default.lr_at(7) == pytest.approx(default.lr)


def test_route_healing_also_trains_the_stitched_routes(tiny_parent_dir):
    """Healing with route_weight > 0 trains the sibling's top blocks to finish from the parent's own stream too:
    the identity-stitched route ends closer to the parent than after healing the sibling alone."""
    from stitchllm.family.distill import DistillConfig, distill, kl_to_teacher
    from stitchllm.family.derive import healing_routes

    parent, tok = load_model(tiny_parent_dir), load_tokenizer(tiny_parent_dir)
    ids = torch.tensor(tok(python_docs_text("train")[:60000], add_special_tokens=False)["input_ids"][:10240])
    calib, train, held_out = list(ids[:2048].split(512)), ids[2048:8192], ids[8192:]
    importance = measure_importance(parent, calib, "skip-nll")
    depth_only, width_too = PruneTarget(2, 64, 4, 2, 128), PruneTarget(2, 32, 2, 1, 48)
    # which routes: those `stitch build` will consider on a depth-pruned sibling (session 17's default kept blocks)
    blocks = [0, 1, 2, 8, 11, 15, 16, 18, 20, 21, 23, 24, 27, 28, 29]
    large, small = (dataclasses.replace(parent.config, num_layers=n) for n in (30, 15))
    # cuts at least 2 apart, as `stitch build` proposes them; from L27 on a route costs as much as the parent
    assert healing_routes(large, small, blocks) == [(11, 4), (15, 5), (18, 7), (20, 8), (23, 10)]
    assert healing_routes(parent.config, width_too.child_config(parent.config), [0, 1]) == []  # streams differ
    child, kept = prune(parent, importance, depth_only)
    routes = [(kept["blocks"][1], 1)]  # the tiny parent's: cut just before the second kept block, enter at it
    batch = ForwardBatch([0, 1], [0, 0], [1024, 1024])
    route_kl = {}
    for weight in (0.0, 1.0):
        child, _ = prune(parent, importance, depth_only)
        cfg = DistillConfig(steps=6, batch=4, micro_batch=2, seq_len=128, lr=1e-3, warmup=1, matmul_dtype="float32",
                            route_weight=weight)
        report = distill(parent, child, train, cfg, routes=routes)
        assert ("route_kl_last" in report) == (weight > 0)
        (cut, entry), = routes
        with torch.no_grad():
            teacher = parent(held_out, batch)
            bottom = parent.run_blocks(parent.embed(held_out), batch, None, 0, cut)
            hidden = child.run_blocks(bottom, batch, None, entry)
            route_kl[weight] = float(kl_to_teacher(teacher, child.head(child.norm(hidden))))
    assert route_kl[1.0] < route_kl[0.0]
