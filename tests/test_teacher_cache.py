"""Teacher cache: the large model's states and top-K log-probs kept on disk, resumable, and stitches trained from it."""

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import needs_bf16

from stitchllm.errors import StitchError
from stitchllm.family.distill import kl_to_teacher
from stitchllm.family.family import Family
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.config import ModelConfig
from stitchllm.models.loader import random_model
from stitchllm.stitch import teacher_cache as tc
from stitchllm.stitch.build import StitchBuildConfig, calibration_fits, training_cache
from stitchllm.stitch.init import pair_fits, paired_activations, paired_from_cache, ridge_affine
from stitchllm.stitch.layer import StitchLayer
from stitchllm.stitch.sparse_kl import teacher_topk, topk_kl
from stitchllm.stitch.teacher_cache import CachedWindow, TeacherCache, TeacherCacheConfig
from stitchllm.stitch.train import StitchTrainConfig, train_stitches

VOCAB, WINDOW = 256, 32
UNIT_ROUNDOFF = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}  # half an ulp, relative, round to nearest
SUBNORMAL_STEP = {"bfloat16": 0.0, "float16": 2.0 ** -25}  # half of fp16's subnormal spacing, below 6.1e-5


def tiny_config(hidden: int, layers: int) -> ModelConfig:
    return ModelConfig(model_type="llama", vocab_size=VOCAB, hidden_size=hidden, num_layers=layers,
                       num_heads=hidden // 16, num_kv_heads=hidden // 32, head_dim=16, intermediate_size=2 * hidden)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """Two random models of unequal widths (64 -> 32) on one vocabulary; the large one's final norm is scaled so
    its next-token distributions are peaked, as a trained model's are (a random one's are near uniform); the small
    one's too, so that a route can match them."""
    large, small = random_model(tiny_config(64, 4), seed=1), random_model(tiny_config(32, 2), seed=2)
    with torch.no_grad():
        large.final_norm.weight.mul_(10.0)
        small.final_norm.weight.mul_(10.0)  # and the route able to be as peaked
    dirs = {}
    for name in ("large", "small"):
        dirs[name] = tmp_path_factory.mktemp(name)
        (dirs[name] / "config.json").write_text(json.dumps({"name": name}))  # what the fingerprint hashes
    return Family(large, small, dirs["large"], dirs["small"], tokenizer=None)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, VOCAB, (20 * WINDOW + 5,), generator=torch.Generator().manual_seed(0))


def counting(model, monkeypatch) -> list[int]:
    """Count the large model's passes (each window the cache computes is one)."""
    calls, run = [], model.residual_states
    monkeypatch.setattr(model, "residual_states", lambda *a: calls.append(1) or run(*a), raising=False)
    return calls


@pytest.mark.parametrize("state_dtype", ["bfloat16", "float16"])
def test_cache_equals_a_fresh_large_pass(family, ids, tmp_path, monkeypatch, state_dtype):
    monkeypatch.setattr(tc, "HEAD_CHUNK", 12)  # several [rows, V] chunks per window, the last one short
    cfg = TeacherCacheConfig(top_k=16, state_dtype=state_dtype, windows_per_shard=3)
    cache = TeacherCache(tmp_path, "fp", ids, WINDOW, (3, 1), cfg)
    assert cache.num_windows == 20 and cache.fill(family.large) == 7  # 20 windows, 3 a shard: the last holds 2
    large = family.large
    worst = 0.0
    for i in (0, 4, 19):
        window = cache.read(i)
        states = large.residual_states(cache.window_ids[i], ForwardBatch([0], [0], [WINDOW]), {1, 3})
        assert torch.equal(window.ids, ids[i * WINDOW:(i + 1) * WINDOW])
        for k in (1, 3):
            err = (window.states[k] - states[k]).abs()
            assert (err <= UNIT_ROUNDOFF[state_dtype] * states[k].abs() + SUBNORMAL_STEP[state_dtype]).all()
            worst = max(worst, float(err.norm() / states[k].norm()))
        logp = F.log_softmax(large.head(large.norm(states[4])), dim=-1)  # [T, V]
        top, top_ids = logp.topk(16, dim=-1)
        assert torch.equal(window.topk_ids, top_ids)
        torch.testing.assert_close(window.topk_logprobs, top, atol=0, rtol=2.0 ** -11)  # fp16 log-probs
        tail = logp.scatter(-1, top_ids, float("-inf")).logsumexp(-1)  # log of the mass off the top 16 [T]
        torch.testing.assert_close(window.tail_logprob, tail, atol=1e-5, rtol=1e-5)
        assert float(window.topk_logprobs[:, 0].exp().mean()) > 0.4  # a peaked teacher, as intended
    print(f"\n{state_dtype} states: relative error (Frobenius) up to {worst:.2e}")


def test_resume_recomputes_only_the_missing_shard(family, ids, tmp_path, monkeypatch):
    cfg = TeacherCacheConfig(top_k=8, windows_per_shard=4)
    calls = counting(family.large, monkeypatch)
    cache = TeacherCache(tmp_path, "fp", ids, WINDOW, (2,), cfg)
    assert cache.fill(family.large, num_windows=10) == 3 and len(calls) == 12  # whole shards: windows 0-11
    assert cache.missing() == [3, 4]
    first = cache.read(5)
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.directory.glob("shard-*")}
    cache.shard_path(1).unlink()
    (cache.directory / "shard-00002.partial").write_bytes(b"half a shard")  # what a crash mid-write leaves
    again = TeacherCache(tmp_path, "fp", ids, WINDOW, (2,), cfg)  # a new process, same key: same directory
    assert again.directory == cache.directory and again.missing(10) == [1]
    calls.clear()
    assert again.fill(family.large, num_windows=10) == 1 and len(calls) == 4  # shard 1's four windows only
    assert {p.name: p.stat().st_mtime_ns for p in cache.directory.glob("shard-0000[02].safetensors")} == \
        {k: v for k, v in stamps.items() if k != "shard-00001.safetensors"}
    got = again.read(5)
    assert torch.equal(got.states[2], first.states[2]) and torch.equal(got.topk_ids, first.topk_ids)
    manifest = json.loads((cache.directory / tc.MANIFEST).read_text())
    assert sorted(manifest["shards"]) == ["0", "1", "2"] and not manifest["complete"]
    assert manifest["shards"]["1"]["windows"] == [4, 8] and manifest["key"]["text"] in cache.directory.name
    # another text, cut or K is another directory; a crash while computing a shard leaves no shard file
    assert TeacherCache(tmp_path, "fp", ids.flip(0), WINDOW, (2,), cfg).directory != cache.directory
    assert TeacherCache(tmp_path, "fp", ids, WINDOW, (2, 3), cfg).directory != cache.directory

    def crash(*args):
        raise RuntimeError("killed")

    monkeypatch.setattr(family.large, "residual_states", crash, raising=False)
    with pytest.raises(RuntimeError):
        again.fill(family.large)
    assert again.missing() == [3, 4] and not list(cache.directory.glob("shard-00003*"))
    with pytest.raises(StitchError, match="not computed yet"):
        again.read(13)


def test_topk_kl_is_the_full_kl_when_k_is_v_and_close_below_on_a_peaked_teacher():
    gen = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(7, 50, generator=gen) * 2, torch.randn(7, 50, generator=gen) * 2

    def cached(logits, k):
        top_ids, logprobs, tail = teacher_topk(logits.clone(), k)
        return CachedWindow(torch.zeros(len(logits), dtype=torch.long), {}, top_ids, logprobs, tail)

    for k in (50, 20):
        s = student.clone().requires_grad_(True)
        full_s = student.clone().requires_grad_(True)
        sparse, full = topk_kl(s, cached(teacher, k)), kl_to_teacher(teacher, full_s)
        sparse.backward(), full.backward()
        sparse, full = sparse.detach(), full.detach()
        assert torch.isfinite(s.grad).all()
        if k == 50:  # every token its own bin: the same KL, the same gradient
            torch.testing.assert_close(sparse, full, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(s.grad, full_s.grad, atol=1e-6, rtol=1e-4)
        else:
            assert float(sparse) <= float(full) + 1e-6  # coarser bins can only lose divergence (log-sum inequality)
    # a peaked teacher over a large vocabulary (4 tokens of 4096 hold ~98% of the mass), a student off everywhere
    vocab, rows = 4096, 64
    peaked = torch.randn(rows, vocab, generator=gen)
    peaked.scatter_add_(-1, torch.randint(0, vocab, (rows, 4), generator=gen), torch.full((rows, 4), 11.0))
    student = peaked + torch.randn(rows, vocab, generator=gen)
    sparse, full = float(topk_kl(student, cached(peaked, 32))), float(kl_to_teacher(peaked, student))
    # what is lost is exactly the teacher's tail mass times the KL of the two distributions inside the tail
    top_ids = peaked.topk(32, -1).indices
    in_tail = torch.ones_like(peaked, dtype=torch.bool).scatter_(-1, top_ids, False)
    p_tail = F.softmax(peaked, -1).masked_fill(~in_tail, 0).sum(-1)  # [rows]
    tail_kl = F.kl_div(F.log_softmax(student.masked_fill(~in_tail, -torch.inf), -1).masked_fill(~in_tail, 0),
                       F.log_softmax(peaked.masked_fill(~in_tail, -torch.inf), -1).masked_fill(~in_tail, 0),
                       log_target=True, reduction="none").sum(-1)  # [rows]
    assert full - sparse == pytest.approx(float((p_tail * tail_kl).mean()), rel=1e-3)
    print(f"\npeaked teacher, tail mass {float(p_tail.mean()):.3f}: top-32 KL {sparse:.4f}, full KL {full:.4f}")
    assert 0.9 * full <= sparse <= full


def test_least_squares_start_from_the_cache(family, ids, tmp_path):
    cache = TeacherCache(tmp_path, "fp", ids[: 8 * WINDOW], WINDOW, (2,), TeacherCacheConfig(top_k=0))
    cache.fill(family.large)
    (x, y), = paired_from_cache(family, cache, [(2, 1)]).values()
    (x_live, y_live), = paired_activations(family, list(ids[: 8 * WINDOW].split(WINDOW)), [(2, 1)]).values()
    assert torch.equal(y, y_live)  # the small model's own stream is computed, not cached
    assert ((x - x_live).abs() <= 2.0 ** -8 * x_live.abs()).all()
    torch.testing.assert_close(ridge_affine(x, y)[0], ridge_affine(x_live, y_live)[0], atol=2e-3, rtol=0)
    assert cache.read(0).topk_ids.shape == (WINDOW, 0) and cache.read(0).tail_logprob.abs().sum() == 0


def test_build_calibration_reads_the_training_cache_and_old_recipes_keep_their_fingerprint(family, tmp_path,
                                                                                            monkeypatch):
    monkeypatch.setenv("STITCHLLM_HOME", str(tmp_path))
    live = StitchBuildConfig(calibration_tokens=3 * 512)
    cached = replace(live, train=replace(live.train, teacher_cache=TeacherCacheConfig()))
    assert StitchBuildConfig().fingerprint() == "7fdc4c11ec34"  # the default recipe's, from before the cache
    assert cached.fingerprint() != live.fingerprint()
    ids = torch.randint(0, VOCAB, (3 * 512 + 100,), generator=torch.Generator().manual_seed(4))
    pairs = [(2, 1), (3, 1)]
    seq = cached.train.seq_len  # the training cache's windows: 6 of 256 tokens
    expected = pair_fits(family, pairs, windows=list(ids[: 3 * 512].split(seq)))
    calls = counting(family.large, monkeypatch)
    got = calibration_fits(family, cached, ids, pairs)
    assert len(calls) == 6 and calibration_fits(family, cached, ids, pairs).keys() == got.keys() and len(calls) == 6
    for pair in pairs:
        fit, fit_live = got[pair], expected[pair]
        assert fit.n == fit_live.n == 3 * 512 and torch.equal(fit.sum_y, fit_live.sum_y)  # y: the small model's own
        torch.testing.assert_close(fit.solve()[0], fit_live.solve()[0], atol=2e-3, rtol=0)  # x: from bf16 states
    assert training_cache(family, cached, ids, {2, 3}).missing(6) == []  # training reads the same windows
    assert (tmp_path / "teacher" / family.fingerprint()["large"]).is_dir()


def route_kl(family, stitch, windows) -> float:
    """Full-vocabulary KL(large || L[:cut] -> stitch -> S[entry:]) on held-out windows [N, T]."""
    total = 0.0
    with torch.no_grad():
        for w in windows:
            batch = ForwardBatch([0], [0], [len(w)])
            states = family.large.residual_states(w, batch, {stitch.cut})
            teacher = family.large.head(family.large.norm(states[family.large.config.num_layers]))
            h = family.small.run_blocks(stitch(states[stitch.cut]), batch, None, stitch.entry)
            total += float(kl_to_teacher(teacher, family.small.head(family.small.norm(h))))
    return total / len(windows)


def test_training_from_the_cache_lowers_the_loss_like_the_live_teacher(family, ids, tmp_path, monkeypatch):
    held_out = torch.randint(0, VOCAB, (4, WINDOW), generator=torch.Generator().manual_seed(9))
    start = StitchLayer(64, 32, 2, 1)
    start.set_affine(torch.randn(32, 64, generator=torch.Generator().manual_seed(3)) * 0.1, torch.zeros(32))
    before = route_kl(family, start, held_out)
    trained = {}
    for name, teacher_cache in (("live", None), ("cached", TeacherCacheConfig(top_k=16, windows_per_shard=4))):
        stitch = StitchLayer(64, 32, 2, 1)
        stitch.set_affine(start.proj.weight.detach(), start.proj.bias.detach())
        cfg = StitchTrainConfig(steps=48, batch=2, seq_len=WINDOW, lr=0.1, matmul_dtype="float32",
                                teacher_cache=teacher_cache)
        calls = counting(family.large, monkeypatch)
        train_stitches(family, {stitch.key: stitch}, ids, cfg, cache_root=tmp_path)
        assert len(calls) == (48 if name == "live" else 20)  # live: a pass a step; cached: once per window
        if name == "cached":  # a second run (e.g. after a crash) reads every window from disk
            calls.clear()
            again = StitchLayer(64, 32, 2, 1)
            again.set_affine(start.proj.weight.detach(), start.proj.bias.detach())
            train_stitches(family, {again.key: again}, ids, cfg, cache_root=tmp_path)
            assert calls == [] and torch.equal(again.proj.weight, stitch.proj.weight)
        trained[name] = route_kl(family, stitch, held_out)
    print(f"\nheld-out KL: start {before:.4f}, trained live {trained['live']:.4f}, "
          f"from the cache {trained['cached']:.4f}")
    assert trained["live"] < 0.85 * before  # unrelated random models: a stitch can close only part of the gap
    assert before - trained["cached"] >= 0.8 * (before - trained["live"])


def test_a_cache_that_keeps_more_cuts_serves_builds_of_fewer(family, ids, tmp_path, monkeypatch):
    cfg = TeacherCacheConfig(top_k=8, windows_per_shard=4, cuts=(1, 2, 3))
    assert cfg.cuts_for([2]) == {1, 2, 3} and TeacherCacheConfig().cuts_for([2]) == {2}
    with pytest.raises(StitchError, match=r"keeps cuts \[1, 2, 3\], not \[4\]"):
        cfg.cuts_for([2, 4])
    train = StitchTrainConfig(steps=2, batch=2, seq_len=WINDOW, matmul_dtype="float32", teacher_cache=cfg)
    calls = counting(family.large, monkeypatch)
    for cut in (1, 3):  # the second build reads the first one's cache
        stitch = StitchLayer(64, 32, cut, 1)
        train_stitches(family, {stitch.key: stitch}, ids, train, cache_root=tmp_path)
    assert len(calls) == 4  # 2 steps x 2 windows, computed once
    assert len(list(tmp_path.glob("*/*-c1.2.3-k8-*"))) == 1


@needs_bf16
def test_a_bf16_teacher_pass_is_a_cache_of_its_own_and_leaves_the_model_fp32(family, ids, tmp_path):
    exact_cfg = TeacherCacheConfig(top_k=8, windows_per_shard=4)
    exact = TeacherCache(tmp_path, "fp", ids, WINDOW, (2,), exact_cfg)
    fast = TeacherCache(tmp_path, "fp", ids, WINDOW, (2,), replace(exact_cfg, matmul_dtype="bfloat16"))
    assert fast.directory != exact.directory  # the two passes never mix
    assert fast.key["matmul_dtype"] == "bfloat16" and "matmul_dtype" not in exact.key  # fp32 keys as before
    batch = ForwardBatch([0], [0], [WINDOW])
    before = family.large(ids[:WINDOW], batch)
    exact.fill(family.large, 4)
    fast.fill(family.large, 4)
    assert torch.equal(family.large(ids[:WINDOW], batch), before)  # the model computes in fp32 again
    for i in range(4):
        a, b = exact.read(i), fast.read(i)
        rel = float((a.states[2] - b.states[2]).norm() / a.states[2].norm())
        assert 0 < rel < 2e-2, rel  # bf16 did run (not bit-equal), and tracks fp32 (bf16's ulp is 2^-8)
        assert (a.topk_ids[:, 0] == b.topk_ids[:, 0]).float().mean() > 0.9
