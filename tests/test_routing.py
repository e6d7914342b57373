"""Policies on synthetic predictions, threshold calibration, the load controller, router manifests."""

import pytest
import torch

from stitchllm.errors import StitchError
from stitchllm.eval.router_eval import apgr, cost_at, evaluate_policies
from stitchllm.routing.calibration import average_cost, calibrate
from stitchllm.routing.controller import LoadController, LoadSignal, SLOConfig
from stitchllm.routing.policies import RoutingBatch, make_policy
from stitchllm.routing.router_model import RouterMLP, load_router, save_router

NAMES = ["small", "L10-S5", "L20-S11", "large"]
COSTS = [0.4, 0.6, 0.8, 1.0]


def synthetic(n: int = 400, seed: int = 0) -> tuple[RoutingBatch, torch.Tensor]:
    """Requests with a difficulty d: every route loses more on harder requests, stitched routes far less than the
    small model; predictions are noisy truths."""
    g = torch.Generator().manual_seed(seed)
    difficulty = torch.rand(n, 1, generator=g)
    scale = torch.tensor([[1.0, 0.35, 0.1, 0.0]])  # stitched routes keep most of the quality
    true = difficulty * scale
    predicted = (true + 0.05 * torch.randn(n, 4, generator=g)).clamp_min(0) * (scale > 0)
    agree = 1.0 - true
    return RoutingBatch(NAMES, COSTS, predicted_loss=predicted, true_loss=true, generator=g), agree


def test_router_minimises_predicted_loss_plus_priced_cost():
    batch = RoutingBatch(NAMES, COSTS, predicted_loss=torch.tensor([[0.9, 0.5, 0.2, 0.0], [0.1, 0.05, 0.0, 0.0]]))
    policy = make_policy("router")
    assert policy.choose(batch, 0.8).tolist() == [3, 0]  # 0.90+0.32, 0.50+0.48, 0.20+0.64, 0.80 | 0.42 cheapest
    assert policy.choose(batch, 1.2).tolist() == [2, 0]  # 1.38, 1.22, 1.16, 1.20
    assert policy.choose(batch, 0.0).tolist() == [3, 2]  # free cost: least loss, the cheaper of a tie
    assert make_policy("whole-model").choose(batch, 0.3).tolist() == [3, 0]
    assert make_policy("fixed:L10-S5").choose(batch, 0.3).tolist() == [1, 1]
    with pytest.raises(StitchError, match="unknown policy"):
        make_policy("smartest")


def test_random_policy_share_follows_probability():
    batch, _ = synthetic(4000)
    picks = make_policy("random").choose(batch, 0.25)
    assert abs(float((picks == 0).float().mean()) - 0.25) < 0.03
    assert set(picks.tolist()) == {0, 3}


@pytest.mark.parametrize("target", [0.5, 0.7, 0.9])
def test_calibration_hits_target_cost_within_2_percent(target):
    batch, _ = synthetic()
    policy = make_policy("router")
    knob = calibrate(policy, batch, target)
    assert abs(average_cost(policy, batch, knob) - target) <= 0.02 * target


def test_policy_ranking_on_synthetic_requests():
    batch, agree = synthetic()
    names = ["router", "random", "whole-model", "oracle", "oracle-whole-model"]
    report = evaluate_policies(batch, agree, names)["policies"]
    assert report["random"]["apgr"] == pytest.approx(0.5, abs=0.03)
    assert report["oracle"]["apgr"] >= report["router"]["apgr"] > report["whole-model"]["apgr"] > 0.5
    # here the stitched routes are worth their cost: even a perfect whole-model router cannot match routing over them
    assert report["oracle-whole-model"]["apgr"] >= report["whole-model"]["apgr"]
    assert report["oracle"]["apgr"] > report["oracle-whole-model"]["apgr"] + 0.05
    assert set(make_policy("oracle-whole-model").choose(batch, 0.5).tolist()) <= {0, 3}
    assert report["router"]["cost_at_95"] < report["random"]["cost_at_95"]


def test_apgr_of_straight_line_is_half():
    assert apgr([[0.4, 0.6], [0.7, 0.8], [1.0, 1.0]], 0.4, 0.6) == pytest.approx(0.5)
    assert cost_at([[0.4, 0.6], [0.7, 0.8], [1.0, 1.0]], 0.6) == 1.0


def test_controller_sheds_cost_under_overload_and_returns_to_large():
    slo = SLOConfig(ttft_ms=1000, tpot_ms=100, queue_depth=8, step=0.1, min_cost=0.4, dwell_s=1.0)
    ctl = LoadController(slo)
    calm = LoadSignal(waiting=0, ttft_p90_ms=200, tpot_p90_ms=40)
    hot = LoadSignal(waiting=20, ttft_p90_ms=3000, tpot_p90_ms=150)
    band = LoadSignal(waiting=7, ttft_p90_ms=700, tpot_p90_ms=70)  # pressure 0.875: inside the hysteresis band
    t = 0.0
    for _ in range(5):
        t += 1.0
        assert ctl.update(calm, t) == 1.0  # light load: everything on the large model
    costs = []
    for _ in range(10):
        t += 1.0
        costs.append(ctl.update(hot, t))
    assert costs[0] == pytest.approx(0.9) and costs[-1] == pytest.approx(0.4)  # cheaper step by step, floored
    held = [ctl.update(band, t + i + 1) for i in range(5)]
    assert held == [pytest.approx(0.4)] * 5  # no oscillation inside the band
    t += 10
    assert ctl.update(hot, t + 0.5) == pytest.approx(0.4)
    for i in range(10):
        ctl.update(calm, t + 2 + i)
    assert ctl.target_cost == 1.0


def test_controller_respects_dwell_time():
    ctl = LoadController(SLOConfig(dwell_s=5.0))
    hot = LoadSignal(waiting=50, ttft_p90_ms=0, tpot_p90_ms=0)
    assert ctl.update(hot, 10.0) == pytest.approx(0.9)
    assert ctl.update(hot, 12.0) == pytest.approx(0.9)
    assert ctl.update(hot, 15.5) == pytest.approx(0.8)


def test_router_manifest_for_other_family_or_stitches_is_refused(tmp_path):
    router = RouterMLP(8, NAMES, hidden=4, feature_block=3)
    save_router(router, tmp_path, {"family": {"large": "a", "small": "b"}, "stitches": "s1"})
    loaded, _ = load_router(tmp_path, {"large": "a", "small": "b"}, "s1")
    assert loaded(torch.zeros(1, 8))[0, -1] == 0.0  # large route: zero loss by definition
    assert loaded.feature_block == 3  # the engine's bottom pass stops where the router reads
    with pytest.raises(StitchError, match="another family or other stitches"):
        load_router(tmp_path, {"large": "a", "small": "c"}, "s1")
    with pytest.raises(StitchError, match="another family or other stitches"):
        load_router(tmp_path, {"large": "a", "small": "b"}, "s2")


def test_shipped_router_serves_until_the_user_trains_their_own(tiny_catalog, tmp_path, monkeypatch):
    import shutil

    from stitchllm.engine.build import load_router_for, own_router_dir, router_dir_for
    from stitchllm.routing.router_model import SHIPPED_ROUTER

    catalog, stitch_dir, router, manifest = tiny_catalog
    shipped = tmp_path / "shipped"  # a shipped stitch directory: the stitches, and their router beside them
    shutil.copytree(stitch_dir, shipped)
    monkeypatch.setenv("STITCHLLM_HOME", str(tmp_path / "home"))
    assert router_dir_for(shipped) == own_router_dir(shipped)  # nothing trained, nothing shipped: where train writes
    save_router(router, shipped / SHIPPED_ROUTER, manifest)
    assert router_dir_for(shipped) == shipped / SHIPPED_ROUTER
    loaded, _ = load_router_for(catalog, shipped)
    assert torch.equal(loaded.net[0].weight, router.net[0].weight)
    own = copy_with_other_weights(router)
    save_router(own, own_router_dir(shipped), manifest)
    loaded, _ = load_router_for(catalog, shipped)
    assert router_dir_for(shipped) == own_router_dir(shipped)
    assert torch.equal(loaded.net[0].weight, own.net[0].weight)


def copy_with_other_weights(router: RouterMLP) -> RouterMLP:
    other = RouterMLP(router.mean.shape[0], router.route_names, router.net[0].out_features, router.feature_block)
    other.load_state_dict(router.state_dict())
    with torch.no_grad():
        other.net[0].weight.add_(1.0)
    return other


def test_router_requests_take_half_from_source_code(tiny_catalog):
    from stitchllm.data.corpus import python_code_text, python_docs_text
    from stitchllm.routing.dataset import sample_requests
    from stitchllm.routing.router_train import RouterTrainConfig, training_requests

    tokenizer = tiny_catalog[0].family.tokenizer
    cfg = RouterTrainConfig(requests=9)

    def spans(text: str, n: int) -> list[torch.Tensor]:
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
        return sample_requests(ids, n, cfg.prompt_len, cfg.cont_len)

    mixed = training_requests(tokenizer, cfg)
    expected = spans(python_docs_text("train"), 5) + spans(python_code_text("train"), 4)
    assert len(mixed) == 9 and all(torch.equal(a, b) for a, b in zip(mixed, expected))
    docs_only = training_requests(tokenizer, RouterTrainConfig(requests=9, text="docs"))
    assert all(torch.equal(a, b) for a, b in zip(docs_only, spans(python_docs_text("train"), 9)))


def test_router_train_and_eval_commands(tiny_catalog, tiny_parent_dir, tiny_sibling, tmp_path):
    """`router train` labels, fits and saves under STITCHLLM_HOME, then finds its recipe up to date; `router eval`
    reports every policy's curve from all-`small` to all-`large`, with its APGR."""
    import json
    import os
    import subprocess
    import sys

    _, stitch_dir, _, _ = tiny_catalog
    members = ["--model", str(tiny_parent_dir), "--small", str(tiny_sibling[0]), "--stitches", str(stitch_dir)]
    env = os.environ | {"STITCHLLM_HOME": str(tmp_path / "home")}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stitchllm.cli", *args, *members], capture_output=True,
                              text=True, timeout=600, env=env)

    train = cli("router", "train", "--target", "text", "--requests", "48", "--matmul-dtype", "float32")
    assert train.returncode == 0, train.stderr[-2000:]
    manifest = json.loads(next((tmp_path / "home" / "routers").glob("*/router.json")).read_text())
    assert manifest["recipe"]["text"] == "docs+code" and manifest["recipe"]["matmul_dtype"] == "float32"
    again = cli("router", "train", "--target", "text", "--requests", "48", "--matmul-dtype", "float32")
    assert again.returncode == 0 and "is up to date" in again.stdout
    text = tmp_path / "heldout.txt"
    text.write_text(" ".join(f"Request {i} asks the router which route serves it best." for i in range(300)))
    evaluated = cli("router", "eval", "--text", str(text), "--requests", "16", "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads(evaluated.stdout)
    policies = report["policies"]
    assert report["requests"] == 16 and set(policies) == {"router", "random", "whole-model", "oracle",
                                                          "oracle-whole-model"}
    small = report["small"]
    assert small["cost"] == pytest.approx(manifest["costs"][0]) and report["large"] == {"cost": 1.0, "top1": 1.0}
    for name, result in policies.items():
        # every policy spans the same two ends: each request on `small`, each on `large` (agreement 1 with itself)
        assert result["curve"][0] == pytest.approx([small["cost"], small["top1"]], abs=1e-5), name
        assert result["curve"][-1] == pytest.approx([1.0, 1.0], abs=1e-5), name
        assert 0.0 <= result["apgr"] <= 1.0 and small["cost"] <= result["cost_at_95"] <= 1.0, name
