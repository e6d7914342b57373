"""The stitch's forms on tiny models of unequal widths: affine, and affine plus a residual MLP."""

import json

import torch

from stitchllm.family.family import Family
from stitchllm.models.config import ModelConfig
from stitchllm.models.loader import random_model
from stitchllm.stitch.layer import StitchLayer
from stitchllm.stitch.store import MANIFEST, load_stitches, save_stitches


def tiny_family(tmp_path) -> Family:
    models, dirs = {}, {}
    for name, hidden, layers in (("large", 64, 4), ("small", 32, 2)):
        models[name] = random_model(ModelConfig(model_type="llama", vocab_size=64, hidden_size=hidden, num_layers=layers,
                                                num_heads=hidden // 16, num_kv_heads=hidden // 32, head_dim=16,
                                                intermediate_size=2 * hidden))
        dirs[name] = tmp_path / name
        dirs[name].mkdir()
        (dirs[name] / "config.json").write_text(json.dumps({"name": name}))  # what the fingerprint hashes
    return Family(models["large"], models["small"], dirs["large"], dirs["small"], tokenizer=None)


def mlp_stitch(seed: int = 0) -> StitchLayer:
    g = torch.Generator().manual_seed(seed)
    stitch = StitchLayer(64, 32, 2, 1, mlp=16)
    stitch.set_affine(torch.randn(32, 64, generator=g), torch.randn(32, generator=g))
    return stitch


def test_a_new_mlp_stitch_computes_its_affine_start_exactly():
    stitch = mlp_stitch()
    x = torch.randn(5, 64) * torch.tensor([4000.0] + [1.0] * 63)  # one massive-activation channel
    with torch.no_grad():
        assert torch.equal(stitch(x), torch.nn.functional.linear(x, stitch.proj.weight, stitch.proj.bias))
    assert stitch.mlp == 16 and StitchLayer(64, 32, 2, 1).mlp == 0


def test_the_mlp_trains_and_is_saved_and_loaded_exactly(tmp_path):
    stitch = mlp_stitch()
    x, target = torch.randn(64, 64), torch.randn(64, 32)
    optim = torch.optim.Adam(stitch.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optim.zero_grad()
        loss = (stitch(x) - target).pow(2).mean()
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0] and stitch.up.weight.abs().sum() > 0  # the MLP moved off its zero start
    family = tiny_family(tmp_path)
    save_stitches({stitch.key: stitch}, tmp_path / "stitches", "trained.safetensors")
    (tmp_path / "stitches" / MANIFEST).write_text(json.dumps({"family": family.fingerprint(), "cuts": [[2, 1]],
                                                              "files": {"trained": "trained.safetensors"}}))
    loaded, = load_stitches(family, tmp_path / "stitches").values()
    with torch.no_grad():
        assert loaded.mlp == 16 and torch.equal(loaded(x), stitch(x))


def test_preconditioning_keeps_the_function_and_folds_back_into_a_plain_affine_map():
    stitch = StitchLayer(64, 32, 2, 1)
    stitch.set_affine(torch.randn(32, 64), torch.randn(32))
    x = torch.randn(7, 64) * torch.tensor([4000.0] + [0.5] * 63)
    with torch.no_grad():
        before = stitch(x)
        scale = x.pow(2).mean(0).sqrt()
        stitch.precondition(scale)
        torch.testing.assert_close(stitch(x), before, rtol=1e-5, atol=1e-2)
        # the massive channel's weights are now ~8,000x the others': Adam's steps move its output like theirs
        assert stitch.proj.weight[:, 0].abs().mean() > 1000 * stitch.proj.weight[:, 1:].abs().mean()
        stitch.proj.weight.add_(0.01)  # a training step, in the preconditioned coordinates
        moved = stitch(x)
        stitch.fold()
        assert stitch.input_scale is None
        torch.testing.assert_close(stitch(x), moved, rtol=1e-5, atol=1e-2)


def test_the_qwen_coder_recipe_reads_one_shared_teacher_cache():
    from stitchllm.stitch.recipes import recipe_for

    recipe = recipe_for("qwen2.5-coder")
    cuts = {k for k, _ in recipe.pairs}
    assert recipe.train.teacher_cache.cuts_for(cuts) == set(recipe.train.teacher_cache.cuts)
    assert recipe.train.precondition and recipe_for("smollm2") == recipe_for(None)
