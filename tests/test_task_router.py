"""The task router (routing/task_router.py): its fit ranks prompts by failure, it covers only the routes it was
trained on, its outcomes are generated once and then read from the cache; and the quality floor's bounds."""

import subprocess
import sys

import pytest
import torch

from stitchllm.errors import StitchError
from stitchllm.routing.controller import SLOConfig
from stitchllm.routing.router_model import RouterMLP, load_router, save_router
from stitchllm.routing.task_router import TaskRouterConfig, fit_task_router, label_outcomes


def test_fit_ranks_prompts_by_failure_and_saves_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(80, 6, generator=g)
    fails = (features[:, 0] + 0.3 * torch.randn(80, generator=g) > 0).float()  # feature 0 says who fails
    router, fit = fit_task_router(features, {"small": fails}, ["small", "large"], 2, TaskRouterConfig())
    predicted = router(features)
    assert predicted[:, 1].eq(0).all()  # large: the reference
    assert 0 < predicted[:, 0].min() and predicted[:, 0].max() < 1  # a probability of failing
    assert predicted[fails == 1, 0].mean() > predicted[fails == 0, 0].mean() + 0.3
    assert fit["small"]["l2"] in TaskRouterConfig().l2 and fit["small"]["fail_rate"] == pytest.approx(fails.mean())
    save_router(router, tmp_path, {"family": {"f": 1}, "stitches": "s"})
    loaded, manifest = load_router(tmp_path, {"f": 1}, "s")
    assert manifest["target"] == "task" and manifest["hidden"] == 0
    assert torch.equal(loaded(features), predicted)


def test_routes_the_router_does_not_cover_get_an_infinite_loss():
    router = RouterMLP(4, ["small", "large"], hidden=0, target="task")
    torch.nn.init.zeros_(router.net[0].bias)
    losses = router.losses_for(torch.zeros(3, 4), ["small", "L2-S1", "large"])
    assert losses.shape == (3, 3) and torch.isinf(losses[:, 1]).all()
    assert torch.equal(losses[:, 0], torch.full((3,), 0.5)) and losses[:, 2].eq(0).all()  # sigmoid(0); large 0
    with pytest.raises(StitchError, match="router target"):
        RouterMLP(4, ["small", "large"], target="kl")


def test_engine_with_a_task_router_serves_only_the_routes_it_covers(tiny_catalog):
    from stitchllm.engine.config import EngineConfig
    from stitchllm.engine.llm_engine import LLMEngine
    from stitchllm.routing.router_train import threshold_table
    from stitchllm.sampling import SamplingParams

    catalog, _, text_router, _ = tiny_catalog
    torch.manual_seed(0)
    router = RouterMLP(text_router.mean.shape[0], ["small", "large"], hidden=0,
                       feature_block=text_router.feature_block, target="task")
    costs = [catalog.relative_cost(catalog.route(r)) for r in router.route_names]
    thresholds = threshold_table(router, torch.randn(64, text_router.mean.shape[0]), costs)
    engine = LLMEngine(catalog, EngineConfig(max_model_len=128, max_num_seqs=16, policy="router"), router,
                       thresholds)
    g = torch.Generator().manual_seed(5)
    for i in range(24):
        engine.add_request(f"t{i}", torch.randint(3, 49152, (12,), generator=g).tolist(),
                           SamplingParams(max_tokens=3, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    routes = {engine.requests[f"t{i}"].route for i in range(24)}
    assert len(catalog.routes) > 2 and routes <= {"small", "large"}


def test_outcomes_are_generated_once_then_read_from_the_cache(tiny_catalog, tmp_path, monkeypatch):
    from stitchllm.data.code_problems import candidate_problems
    from stitchllm.eval import humaneval_run
    from stitchllm.eval.humaneval import encode_problem

    monkeypatch.setenv("STITCHLLM_HOME", str(tmp_path))
    catalog, stitch_dir, _, _ = tiny_catalog
    problems = [p for p in candidate_problems() if p["task_id"].startswith("stdlib/statistics.py:")][:2]
    prompts = [encode_problem(catalog.family.tokenizer, p, "chat", 1024) for p in problems]
    cfg = TaskRouterConfig(max_new_tokens=4, weights="fp32", matmul_dtype="float32")
    first = label_outcomes(catalog, stitch_dir, problems, prompts, cfg)
    # a random tiny model writes no working code in 4 tokens: every answer fails its examples
    assert first == {(p["task_id"], r): False for p in problems for r in ("small", "large")}

    def must_not_run(*args, **kwargs):
        raise AssertionError("generated again instead of reading the cache")

    monkeypatch.setattr(humaneval_run, "evaluate", must_not_run)
    assert label_outcomes(catalog, stitch_dir, problems, prompts, cfg) == first


def test_quality_floor_bounds_and_the_cli_errors():
    with pytest.raises(StitchError, match="min_cost"):
        SLOConfig(min_cost=-0.1)
    assert SLOConfig(min_cost=1.0).min_cost == 1.0 and SLOConfig().min_cost == 0.0  # no floor by default
    out = subprocess.run([sys.executable, "-m", "stitchllm.cli", "router", "train", "--target", "kl"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip() == "error: --target must be one of text, task, got 'kl'"
    out = subprocess.run([sys.executable, "-m", "stitchllm.cli", "serve", "--min-cost", "1.5"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().startswith("error: min_cost must be in [0, 1]")
