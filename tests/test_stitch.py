"""Stitching: routes, least-squares identity, manifests tied to their family, cached generation along a route."""

import pytest
import torch

from stitchllm.errors import StitchError
from stitchllm.family.family import load_family
from stitchllm.generation import generate
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.config import ModelConfig
from stitchllm.models.linear import dtype_name, resolve_matmul_dtype
from stitchllm.routing.catalog import build_catalog, load_catalog
from stitchllm.routing.route import default_cuts, entry_after, enumerate_routes, matched_entry
from stitchllm.sampling import SamplingParams
from stitchllm.stitch.build import StitchBuildConfig, build_stitches
from stitchllm.stitch.frontier import dominated
from stitchllm.stitch.init import pair_fits, paired_activations, ridge_affine
from stitchllm.stitch.layer import StitchLayer
from stitchllm.stitch.train import StitchTrainConfig


def smollm2_like(layers: int, hidden: int) -> ModelConfig:
    return ModelConfig(model_type="llama", vocab_size=49152, hidden_size=hidden, num_layers=layers,
                       num_heads=hidden // 64, num_kv_heads=hidden // 192, head_dim=64, intermediate_size=1536,
                       tie_word_embeddings=True)


def test_route_enumeration_and_depth_matching():
    configs = {"large": smollm2_like(30, 576), "small": smollm2_like(16, 384)}
    assert default_cuts(30) == [10, 13, 16, 19, 22, 25, 28]
    assert [matched_entry(k, configs) for k in default_cuts(30)] == [5, 7, 9, 10, 12, 13, 15]
    routes = enumerate_routes(configs)
    names = [r.name for r in routes]
    assert names[0] == "small" and names[-1] == "large" and "L16-S9" in names and len(names) == 9
    costs = [r.flops_per_token(configs) for r in routes]
    assert costs == sorted(costs)  # ordered by cost; leaving later costs more
    stitched = next(r for r in routes if r.name == "L16-S9")
    large = routes[-1]
    expected = (16 * configs["large"].block_flops_per_token + 7 * configs["small"].block_flops_per_token
                + 2 * 576 * 384 + configs["small"].head_flops_per_token)
    assert stitched.flops_per_token(configs) == expected
    assert large.params(configs) == configs["large"].total_params


def test_entries_follow_a_derived_siblings_block_map(tiny_parent_dir, tiny_sibling):
    configs = {"large": smollm2_like(30, 576), "small": smollm2_like(15, 576)}
    block_map = [0, 1, 6, 7, 8, 10, 18, 19, 20, 21, 22, 23, 24, 28, 29]  # session 16's default sibling's kept blocks
    routes = enumerate_routes(configs, block_map=block_map)
    # relative depth at every 3rd block, plus cuts just before kept blocks (2 apart, upper two thirds) entering at
    # them; L28-S13 would cost more than the large model. The four block-map routes at 27 blocks cost the same.
    assert [r.name for r in routes] == ["small", "L10-S5", "L13-S6", "L16-S8", "L19-S10", "L22-S11", "L18-S6",
                                        "L20-S8", "L22-S10", "L24-S12", "L25-S12", "L28-S14", "large"]
    assert entry_after(13, block_map) == 6 and entry_after(29, block_map) == 14
    assert load_family(tiny_parent_dir, tiny_sibling[0]).small_block_map() == tiny_sibling[1]["kept"]["blocks"]
    assert load_family(tiny_parent_dir, tiny_parent_dir).small_block_map() is None  # not derived from the large


@pytest.fixture(scope="module")
def self_family(tiny_parent_dir):
    """The tiny parent stitched to itself: a stitch at equal depth must learn the identity."""
    return load_family(tiny_parent_dir, tiny_parent_dir)


def test_self_stitch_least_squares_reproduces_the_model(self_family):
    ids = torch.randint(0, 49152, (4096,), generator=torch.Generator().manual_seed(0))
    fit = pair_fits(self_family, [(2, 2)], windows=list(ids.split(512)))[(2, 2)]  # statistics summed per pass
    assert fit.n == 4096
    x, y = paired_activations(self_family, list(ids.split(512)), [(2, 2)])[(2, 2)]  # the same, all at once
    torch.testing.assert_close(fit.solve(1e-8)[0], ridge_affine(x, y, ridge=1e-8)[0], atol=1e-4, rtol=0)
    stitch = StitchLayer(64, 64, 2, 2)
    stitch.set_affine(*fit.solve(ridge=1e-8))
    catalog = build_catalog(self_family, {stitch.key: stitch})
    route = catalog.route("L2-S2")
    probe = torch.randint(0, 49152, (40,), generator=torch.Generator().manual_seed(1))
    batch = ForwardBatch([0], [0], [40])
    expected = self_family.large(probe, batch)
    got = catalog.executor.full_logits(route)(probe, batch)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)


@pytest.fixture(scope="module")
def tiny_stitches(tiny_parent_dir, tiny_sibling, tmp_path_factory):
    family = load_family(tiny_parent_dir, tiny_sibling[0])
    out = tmp_path_factory.mktemp("stitches")
    cfg = StitchBuildConfig(cuts=(2, 3), block_map=False, screen=False, calibration_tokens=4096, validation_tokens=1024,
                            train=StitchTrainConfig(steps=3))
    return family, out, build_stitches(family, cfg, out)


def test_build_writes_manifest_with_metrics(tiny_stitches):
    family, out, manifest = tiny_stitches
    assert manifest["family"] == family.fingerprint()
    assert manifest["cuts"] == [[2, 1], [3, 1]]  # entry matched by depth: round(k * 2 / 4), at least 1
    assert set(manifest["validation"]["init"]) == {"small", "L2-S1", "L3-S1", "large"}
    assert manifest["validation"]["trained"]["large"]["kl"] == pytest.approx(0.0, abs=1e-6)
    # the precision training ran in is recorded: auto resolves per CPU (bf16 with native bf16 dot products)
    assert manifest["training"]["matmul_dtype"] == dtype_name(resolve_matmul_dtype("auto"))


def test_manifest_for_another_family_is_refused(tiny_stitches, tiny_parent_dir, tiny_sibling, tmp_path):
    from conftest import save_tiny_hf_model
    import shutil

    _, out, _ = tiny_stitches
    other = tmp_path / "other-parent"
    save_tiny_hf_model(other, "llama", seed=7, vocab_size=49152, hidden_size=64, num_hidden_layers=4,
                       intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    shutil.copy2(tiny_parent_dir / "tokenizer.json", other / "tokenizer.json")
    shutil.copy2(tiny_parent_dir / "tokenizer_config.json", other / "tokenizer_config.json")
    with pytest.raises(StitchError, match="trained for another family"):
        load_catalog(str(other), str(tiny_sibling[0]), str(out))


def test_generation_along_route_equals_full_scoring(tiny_stitches, tiny_parent_dir, tiny_sibling):
    _, out, _ = tiny_stitches
    catalog = load_catalog(str(tiny_parent_dir), str(tiny_sibling[0]), str(out))
    route = catalog.route("L3-S1")
    prompt = torch.randint(0, 49152, (11,), generator=torch.Generator().manual_seed(2)).tolist()
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    (new,) = generate(catalog.executor.last_logits(route, 1, 32), [prompt], params, set())
    ids = torch.tensor(prompt + new)
    logits = catalog.executor.full_logits(route)(ids, ForwardBatch([0], [0], [len(ids)]))
    assert logits[len(prompt) - 1 : -1].argmax(-1).tolist() == new


def test_shipped_stitches_serve_until_the_family_has_its_own_build(tiny_stitches, tiny_parent_dir, tiny_sibling,
                                                                    tmp_path, monkeypatch):
    import shutil

    from stitchllm.stitch import build

    family, out, manifest = tiny_stitches
    monkeypatch.setenv("STITCHLLM_HOME", str(tmp_path / "home"))  # nothing built there
    monkeypatch.setattr(build, "SHIPPED", tmp_path / "shipped")
    assert not load_catalog(str(tiny_parent_dir), str(tiny_sibling[0])).stitches  # nothing shipped either
    shipped = build.SHIPPED / build.stitches_dir(family).name
    shipped.mkdir(parents=True)
    for name in ("manifest.json", "trained.safetensors"):  # what ships: not the starts
        shutil.copy2(out / name, shipped / name)
    assert build.serving_stitches_dir(family) == shipped
    assert {s.key for s in load_catalog(str(tiny_parent_dir), str(tiny_sibling[0])).stitches.values()} == \
        {f"{k}-{j}" for k, j in manifest["cuts"]}
    with pytest.raises(StitchError, match="no init stitches at .*missing init.safetensors"):
        load_catalog(str(tiny_parent_dir), str(tiny_sibling[0]), which="init")
    shutil.copytree(out, build.stitches_dir(family))  # a build of its own wins
    assert build.serving_stitches_dir(family) == build.stitches_dir(family) != shipped


def test_build_keeps_only_the_validation_frontier(tiny_parent_dir, tiny_sibling, tmp_path):
    # kept: better on KL and ppl than every kept route of lower or equal cost (at equal cost the better one stays)
    quality = {"small": (2.0, 50), "A": (1.5, 40), "B": (1.6, 35), "C": (1.0, 30), "D": (0.9, 29), "E": (0.8, 31),
               "large": (0.0, 15)}
    costs = {"small": 0.3, "A": 0.5, "B": 0.6, "C": 0.8, "D": 0.8, "E": 0.9, "large": 1.0}
    assert dominated({n: {"kl": kl, "ppl": ppl} for n, (kl, ppl) in quality.items()}, costs) == {"B", "C", "E"}
    family = load_family(tiny_parent_dir, tiny_sibling[0])
    cfg = StitchBuildConfig(cuts=(1, 2, 3), calibration_tokens=4096, validation_tokens=1024,
                            train=StitchTrainConfig(steps=2))
    manifest = build_stitches(family, cfg, tmp_path)
    configs = {"large": family.large.config, "small": family.small.config}
    candidates = enumerate_routes(configs, [1, 2, 3], family.small_block_map())
    kept = [r for r in candidates if r.name in manifest["validation"]["trained"]]
    assert kept[0].name == "small" and kept[-1].name == "large"
    assert {r.name for r in kept} | set(manifest["screened_out"]) == {r.name for r in candidates}
    for key in ("kl", "ppl"):  # dearer stitched routes strictly better
        values = [manifest["validation"]["trained"][r.name][key] for r in kept[1:-1]]
        assert values == sorted(values, reverse=True) and len(set(values)) == len(values)
    catalog = load_catalog(str(tiny_parent_dir), str(tiny_sibling[0]), str(tmp_path))
    assert [r.name for r in catalog.routes] == [r.name for r in kept]


@pytest.fixture(scope="module")
def depth_family(tiny_parent_dir, tmp_path_factory):
    """A sibling pruned in depth only (the width kept), as the default family's is: stitches may start as the
    identity."""
    from stitchllm.family.derive import DeriveConfig, derive
    from stitchllm.family.prune import PruneTarget

    out = tmp_path_factory.mktemp("depth-sibling")
    derive(DeriveConfig(parent=str(tiny_parent_dir), target=PruneTarget(layers=2, hidden=64, heads=4, kv_heads=2,
                        intermediate=128), calibration_tokens=2048, heal_tokens=4096), out)
    return load_family(tiny_parent_dir, out)


def test_stitches_start_from_the_better_init_and_keep_the_better_of_start_and_trained(depth_family, tmp_path):
    family = depth_family
    cfg = StitchBuildConfig(cuts=(1, 2, 3), screen=False, calibration_tokens=4096, validation_tokens=1024,
                            train=StitchTrainConfig(steps=2, lr=0.5))  # an lr this large must ruin some stitch
    manifest = build_stitches(family, cfg, tmp_path)
    stitched = [n for n in manifest["validation"]["init"] if n not in ("small", "large")]
    assert set(manifest["start"]) == set(stitched) and set(manifest["start"].values()) <= {"least-squares", "identity"}
    init, trained = manifest["validation"]["init"], manifest["validation"]["trained"]
    starts = manifest["validation"]["starts"]
    assert set(starts) == {"least-squares", "identity"}
    for name in stitched:  # each route starts from the init with the lower validation KL
        assert manifest["start"][name] == min(starts, key=lambda s: starts[s][name]["kl"])
        assert init[name] == starts[manifest["start"][name]][name]
    assert all(trained[n]["kl"] <= init[n]["kl"] for n in stitched)
    assert manifest["training_undone"], "lr 0.5 for 2 steps should have made some stitch worse"
    for name in manifest["training_undone"]:
        assert trained[name] == init[name]
    # an identity start runs the large bottom straight into the small top; an undone stitch is exactly its start
    catalog_init = load_catalog(str(family.large_dir), str(family.small_dir), str(tmp_path), which="init")
    catalog = load_catalog(str(family.large_dir), str(family.small_dir), str(tmp_path))
    probe = torch.randint(0, 49152, (40,), generator=torch.Generator().manual_seed(3))
    batch = ForwardBatch([0], [0], [40])
    for name in stitched:
        route = catalog_init.route(name)
        got = catalog_init.executor.full_logits(route)(probe, batch)
        if manifest["start"][name] == "identity":
            (cut, entry), = route.stitches
            hidden = family.large.run_blocks(family.large.embed(probe), batch, None, 0, cut)
            hidden = family.small.run_blocks(hidden, batch, None, entry)
            torch.testing.assert_close(got, family.small.head(family.small.norm(hidden)), atol=1e-4, rtol=0)
        if name in manifest["training_undone"]:
            torch.testing.assert_close(catalog.executor.full_logits(catalog.route(name))(probe, batch), got,
                                       atol=1e-5, rtol=0)
