"""`router train`: label calibration requests by running every route, fit the router, calibrate thresholds."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from stitchllm.data.corpus import python_code_text, python_docs_text
from stitchllm.errors import StitchError
from stitchllm.models.linear import resolve_matmul_dtype
from stitchllm.routing.calibration import calibrate
from stitchllm.routing.catalog import RouteCatalog
from stitchllm.routing.dataset import RouterDataset, build_dataset, sample_requests, shared_blocks
from stitchllm.routing.policies import RoutingBatch, make_policy
from stitchllm.routing.router_model import RouterMLP, save_router
from stitchllm.stitch.store import stitches_fingerprint

TARGET_COSTS = [round(0.30 + 0.05 * i, 2) for i in range(15)]  # 0.30 .. 1.00


@dataclass(frozen=True, slots=True)
class RouterTrainConfig:
    """Labelled requests (prompt + teacher-forced continuation) and the MLP fit."""

    requests: int = 384
    prompt_len: int = 64
    cont_len: int = 32
    hidden: int = 32
    feature_block: int = 2  # read the prompt after this many large blocks (capped at the earliest cut): see ROUTING.md
    epochs: int = 400
    lr: float = 1e-3
    weight_decay: float = 0.1
    seed: int = 0
    text: str = "docs+code"  # docs | docs+code: with code, half the requests are spans of the stdlib's source files
    matmul_dtype: str = "float32"  # what the blocks and stitches compute in while labelling; bfloat16, on CPUs with
    # native bf16 dot products, ran the stitch build's teacher pass 3.4x faster at KL 0.0003 (STITCHING.md)


def training_requests(tokenizer, cfg: RouterTrainConfig) -> list[torch.Tensor]:
    """cfg.requests spans of (prompt + continuation) ids from the train split: its docstrings, and with
    text 'docs+code' half of them from its source files (what code-model users send)."""
    def ids(text: str) -> torch.Tensor:
        return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])

    if cfg.text not in ("docs", "docs+code"):
        raise StitchError(f"router text must be docs or docs+code, got {cfg.text!r}")
    n_code = cfg.requests // 2 if cfg.text == "docs+code" else 0
    requests = sample_requests(ids(python_docs_text("train")), cfg.requests - n_code, cfg.prompt_len, cfg.cont_len)
    if n_code:
        requests += sample_requests(ids(python_code_text("train")), n_code, cfg.prompt_len, cfg.cont_len)
    return requests


def label_requests(catalog: RouteCatalog, requests: list[torch.Tensor], cfg: RouterTrainConfig,
                   feature_block: int) -> RouterDataset:
    """build_dataset, on a catalog of fp32 weights (as `router train` and `router eval` load it) that computes in
    cfg.matmul_dtype from then on: its blocks and stitches in that precision, its heads in fp32
    (RouteCatalog.set_matmul_dtype), as the labels of the router's own requests were computed."""
    catalog.set_matmul_dtype(resolve_matmul_dtype(cfg.matmul_dtype))
    return build_dataset(catalog, requests, cfg.prompt_len, feature_block)


def fit_router(data: RouterDataset, cfg: RouterTrainConfig) -> tuple[RouterMLP, dict[str, float]]:
    """Full-batch regression of log(1 + KL) per route, early-stopped on a held-back fifth of the requests (with a
    few hundred requests and ~1k features an MLP memorises its labels within a few hundred steps otherwise; the
    default family's first router, fitted without this, did worse on held-back requests than each route's mean).
    Returns the router at its best validation epoch and its train / validation MSE there."""
    torch.manual_seed(cfg.seed)
    order = torch.randperm(data.features.shape[0])
    n_val = max(1, data.features.shape[0] // 5)
    val, train = order[:n_val], order[n_val:]
    router = RouterMLP(data.features.shape[1], data.route_names, cfg.hidden, data.feature_block)
    router.mean.copy_(data.features[train].mean(0))
    router.std.copy_(data.features[train].std(0).clamp_min(1e-4))
    with torch.no_grad():  # start as the per-route mean: training must beat it on held-back requests to count
        router.net[-1].weight.zero_()
        router.net[-1].bias.copy_(torch.log(torch.expm1(data.loss[train].mean(0).clamp_min(1e-4))))  # softplus^-1
    optim = torch.optim.AdamW(router.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    target = data.loss
    best = {"val_mse": float("inf")}
    for epoch in range(cfg.epochs):
        router.train()
        loss = torch.nn.functional.mse_loss(router(data.features[train]), target[train])
        optim.zero_grad()
        loss.backward()
        optim.step()
        router.eval()
        with torch.no_grad():
            val_mse = float(torch.nn.functional.mse_loss(router(data.features[val]), target[val]))
        if val_mse < best["val_mse"]:
            best = {"val_mse": val_mse, "train_mse": float(loss.detach()), "epoch": epoch,
                    "state": {k: v.clone() for k, v in router.state_dict().items()}}
    router.load_state_dict(best.pop("state"))
    router.eval().requires_grad_(False)
    return router, best


def threshold_table(router: RouterMLP, features: torch.Tensor, costs: list[float]) -> dict[str, list[list[float]]]:
    """Per threshold policy, [target cost, threshold] pairs calibrated on the training requests' features [N, F]
    (as RouteLLM calibrates a threshold for a target share of strong-model calls); `costs` per router route."""
    with torch.no_grad():
        batch = RoutingBatch(router.route_names, costs, predicted_loss=router(features))
    return {name: [[c, calibrate(make_policy(name), batch, c)] for c in TARGET_COSTS]
            for name in ("router", "whole-model")}


def train_router(catalog: RouteCatalog, stitch_dir: Path, cfg: RouterTrainConfig, out: Path) -> dict:
    """Label `cfg.requests` training requests with every route's loss, fit the router on them, calibrate its
    thresholds and save all in `out`."""
    started = time.perf_counter()
    requests = training_requests(catalog.family.tokenizer, cfg)
    data = label_requests(catalog, requests, cfg, min(cfg.feature_block, shared_blocks(catalog)))
    router, fit = fit_router(data, cfg)
    manifest = {
        "family": catalog.family.fingerprint(),
        "stitches": stitches_fingerprint(stitch_dir),
        "recipe": asdict(cfg),
        "fit": fit,
        "costs": data.costs,
        "thresholds": threshold_table(router, data.features, data.costs),
        "flops_per_prediction": router.flops(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    save_router(router, out, manifest)
    return manifest
