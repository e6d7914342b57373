"""Route adapters (stitch/adapters.py): a route's own low-rank updates of the small model's blocks apply to its
rows alone, train with its stitch, are saved and loaded with it, and the engine serves them as the route alone."""

import pytest
import torch
from torch import nn

from stitchllm.engine.config import EngineConfig
from stitchllm.engine.llm_engine import LLMEngine
from stitchllm.family.family import load_family
from stitchllm.generation import generate
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.config import ModelConfig
from stitchllm.models.loader import random_model
from stitchllm.routing.catalog import load_catalog
from stitchllm.sampling import SamplingParams
from stitchllm.stitch.adapters import LINEARS, BlockAdapters, adapted
from stitchllm.stitch.build import StitchBuildConfig, build_stitches
from stitchllm.stitch.train import StitchTrainConfig

CONFIG = ModelConfig(model_type="llama", vocab_size=64, hidden_size=32, num_layers=3, num_heads=2, num_kv_heads=1,
                     head_dim=16, intermediate_size=48)


def random_adapters(model, first: int, rank: int, seed: int) -> BlockAdapters:
    adapters = BlockAdapters(model, first, rank, seed=seed)
    enlarge(adapters, seed)
    return adapters


def enlarge(adapters: BlockAdapters, seed: int) -> None:
    """B starts at zero and a few training steps move it little: make every update change the route's tokens."""
    with torch.no_grad():
        for _, _, delta in adapters.deltas():
            delta.b.copy_(torch.randn(delta.b.shape, generator=torch.Generator().manual_seed(seed)) * 0.5)


def catalog_with_large_updates(out, tiny_parent_dir, tiny_sibling):
    catalog = load_catalog(str(tiny_parent_dir), str(tiny_sibling[0]), str(out))
    for seed, stitch in enumerate(catalog.executor.stitches.values()):
        enlarge(stitch.adapters, seed)
    return catalog


def greedy(catalog, route, prompt: list[int], params: SamplingParams) -> list[int]:
    return generate(catalog.executor.last_logits(route, 1, 128), [prompt], params, set())[0]


def test_an_adapter_changes_its_rows_as_merged_weights_would_and_no_others():
    model = random_model(CONFIG, seed=3)
    adapters = random_adapters(model, first=1, rank=4, seed=5)
    merged = random_model(CONFIG, seed=3)  # the same weights, W + B A written into blocks 1 and 2
    with torch.no_grad():
        for block, name, delta in adapters.deltas():
            linear = getattr(merged.blocks[block], name)
            linear.weight = nn.Parameter(linear.dense_weight() + delta.b @ delta.a, requires_grad=False)
            linear.pack()
    with torch.inference_mode():
        check_rows(model, adapters, merged)


def check_rows(model, adapters, merged) -> None:
    ids = torch.randint(0, 64, (17,), generator=torch.Generator().manual_seed(0))
    batch = ForwardBatch([0, 1], [0, 0], [10, 7])  # two sequences packed: rows 0-9 and 10-16
    hidden = model.embed(ids)
    plain = model.run_blocks(hidden, batch, None, 1)
    with adapted(model, [(slice(0, 10), adapters)]):
        mixed = model.run_blocks(hidden, batch, None, 1)
    assert all(getattr(model.blocks[i], n).deltas == () for i in range(3) for n in LINEARS)  # gone after the batch
    want = merged.run_blocks(hidden, batch, None, 1)
    torch.testing.assert_close(mixed[:10], want[:10], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(mixed[:10], plain[:10], rtol=1e-2, atol=1e-3)  # the update is not negligible
    assert torch.equal(mixed[10:], plain[10:])  # the other sequence ran the shared weights alone


@pytest.fixture(scope="module")
def adapted_stitches(tiny_parent_dir, tiny_sibling, tmp_path_factory):
    family = load_family(tiny_parent_dir, tiny_sibling[0])
    out = tmp_path_factory.mktemp("adapted-stitches")
    cfg = StitchBuildConfig(cuts=(2, 3), block_map=False, screen=False, calibration_tokens=4096,
                            validation_tokens=1024, adapter_rank=4, train=StitchTrainConfig(steps=3))
    return family, out, build_stitches(family, cfg, out)


def test_adapters_train_and_load_with_their_stitch(adapted_stitches, tiny_parent_dir, tiny_sibling):
    family, out, manifest = adapted_stitches
    catalog = load_catalog(str(tiny_parent_dir), str(tiny_sibling[0]), str(out))
    for cut, entry in manifest["cuts"]:
        stitch = catalog.executor.stitch(cut, entry)
        n_small = family.small.config.num_layers
        assert {(i, n) for i, n, _ in stitch.adapters.deltas()} == {(i, n) for i in range(entry, n_small)
                                                                       for n in LINEARS}
        assert stitch.adapters.rank == 4
        assert any(float(d.b.abs().max()) > 0 for _, _, d in stitch.adapters.deltas())  # trained from zero
    # `small` itself runs the shared blocks untouched
    ids = torch.randint(0, 49152, (20,), generator=torch.Generator().manual_seed(1))
    batch = ForwardBatch([0], [0], [20])
    with torch.inference_mode():
        got = catalog.executor.full_logits(catalog.route("small"))(ids, batch)
        torch.testing.assert_close(got, catalog.family.small(ids, batch))


def test_generation_along_an_adapted_route_equals_full_scoring(adapted_stitches, tiny_parent_dir, tiny_sibling):
    _, out, _ = adapted_stitches
    catalog = catalog_with_large_updates(out, tiny_parent_dir, tiny_sibling)
    route = catalog.route("L3-S1")
    prompt = torch.randint(0, 49152, (11,), generator=torch.Generator().manual_seed(2)).tolist()
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    new = greedy(catalog, route, prompt, params)
    stitch = catalog.executor.stitch(3, 1)
    adapters, stitch.adapters = stitch.adapters, None
    assert greedy(catalog, route, prompt, params) != new  # the updates decide tokens here
    stitch.adapters = adapters
    ids = torch.tensor(prompt + new)
    logits = catalog.executor.full_logits(route)(ids, ForwardBatch([0], [0], [len(ids)]))
    assert logits[len(prompt) - 1 : -1].argmax(-1).tolist() == new


def test_the_engine_batches_adapted_routes_with_others_and_serves_each_as_alone(adapted_stitches, tiny_parent_dir,
                                                                                  tiny_sibling):
    _, out, _ = adapted_stitches
    catalog = catalog_with_large_updates(out, tiny_parent_dir, tiny_sibling)
    engine = LLMEngine(catalog, EngineConfig(max_model_len=128, max_num_seqs=16, max_num_batched_tokens=64,
                                             policy="fixed:large"), None, None)
    names = [r.name for r in catalog.routes]  # small, L2-S1, L3-S1, large: S1 is shared by three of them
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(3, 49152, (int(torch.randint(5, 30, (1,), generator=gen)),), generator=gen).tolist()
               for _ in range(12)]
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, params, route=names[i % len(names)])
    got: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for o in engine.step():
            got.setdefault(o.request_id, []).extend(o.new_token_ids)
    for i, p in enumerate(prompts):
        route = catalog.route(names[i % len(names)])
        assert got[f"r{i}"] == greedy(catalog, route, p, params), f"request {i} on {route.name}"
