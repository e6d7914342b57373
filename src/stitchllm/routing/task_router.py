"""`router train --target task`: a router that predicts, from the prompt's states, whether `small`'s answer to a
code problem fails its tests; trained on code problems that are not HumanEval (data/code_problems.py).

Why: the text router predicts per-token KL, and on HumanEval that knows nothing of which problems `small` solves
(docs/ROUTING.md). Here the labels are task outcomes: every training problem is answered by each route as the
engine serves a chat request (greedy, stopped once the answer's code block closes) and checked by its tests.
Those generations are the expensive part (~40 min on 2 cores for both whole models), so each route's outcomes
are cached on disk per family and weight format and reused by later runs.

The fit is a logistic regression per covered route on the standardised pooled states, its L2 strength chosen
by 5-fold cross-validation: with ~100 problems, a hidden layer only memorises.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from stitchllm.errors import StitchError
from stitchllm.models.batch import ForwardBatch
from stitchllm.paths import stitchllm_home
from stitchllm.routing.catalog import RouteCatalog
from stitchllm.routing.features import pool_features
from stitchllm.routing.router_model import RouterMLP, save_router
from stitchllm.stitch.store import stitches_fingerprint


@dataclass(frozen=True, slots=True)
class TaskRouterConfig:
    """Which routes are labelled, how answers are generated, and the fit."""

    target: str = "task"
    routes: tuple[str, ...] = ("small", "large")  # the stitched routes fail HumanEval (docs/QUALITY.md): unlabelled
    feature_block: int = 2  # as the text router: the prompt's states after the large model's first 2 blocks
    max_new_tokens: int = 512
    weights: str = "gguf"  # the engine's weights while labelling (what `serve` runs by default)
    matmul_dtype: str = "float32"
    l2: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0)  # candidate penalties on the squared weights' sum
    folds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if "large" not in self.routes or len(self.routes) < 2:
            raise StitchError("a task router needs `large` and at least one other route")


def outcomes_path(catalog: RouteCatalog, cfg: TaskRouterConfig) -> Path:
    """Where the routes' outcomes are cached: per family and labelling settings (not per stitches)."""
    key = json.dumps([catalog.family.fingerprint(), cfg.weights, cfg.matmul_dtype, cfg.max_new_tokens], sort_keys=True)
    return stitchllm_home() / "task_outcomes" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsonl"


def label_outcomes(catalog: RouteCatalog, stitch_dir, problems: list[dict], prompts: list[list[int]],
                   cfg: TaskRouterConfig) -> dict[tuple[str, str], bool]:
    """(task_id, route) -> passed, for every problem and route: from the cache, generating what is missing."""
    from stitchllm.eval.humaneval_run import HumanEvalConfig, evaluate

    path = outcomes_path(catalog, cfg)
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    passed = {(r["task_id"], r["route"]): r["passed"] for r in rows}
    gen_cfg = HumanEvalConfig(max_new_tokens=cfg.max_new_tokens, weights=cfg.weights, matmul_dtype=cfg.matmul_dtype)
    for route in cfg.routes:
        todo = [i for i, p in enumerate(problems) if (p["task_id"], route) not in passed]
        if not todo:
            continue
        _, samples = evaluate(catalog, stitch_dir, [problems[i] for i in todo], [prompts[i] for i in todo],
                              f"fixed:{route}", gen_cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:  # appended per route: an interrupted run keeps the routes it finished
            for s in samples:
                passed[(s.task_id, route)] = s.passed
                f.write(json.dumps({"task_id": s.task_id, "route": route, "passed": s.passed, "result": s.result,
                                    "output_tokens": len(s.output_ids)}) + "\n")
    return passed


@torch.inference_mode()
def prompt_features(catalog: RouteCatalog, prompts: list[list[int]], feature_block: int) -> torch.Tensor:
    """[N, 2d]: each prompt's states after the large model's first `feature_block` blocks, pooled as the engine
    pools them before routing (routing/features.py)."""
    large, rows = catalog.family.large, []
    for ids in prompts:
        batch = ForwardBatch([0], [0], [len(ids)])
        hidden = large.embed(torch.tensor(ids))  # [T, d]
        for block in large.blocks[:feature_block]:
            hidden = block(hidden, batch)
        rows.append(pool_features(hidden.float(), [len(ids)])[0])
    return torch.stack(rows)


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, F] standardised, y [N] in {0, 1} -> (w [F], b): mean log loss + l2 x |w|^2, by L-BFGS."""
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _cv_log_loss(x: torch.Tensor, y: torch.Tensor, l2: float, folds: int, seed: int) -> float:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    total = 0.0
    for k in range(folds):
        test = order[k::folds]
        train = order[torch.isin(order, test, invert=True)]
        w, b = _fit_logistic(x[train], y[train], l2)
        total += float(torch.nn.functional.binary_cross_entropy_with_logits(x[test] @ w + b, y[test], reduction="sum"))
    return total / len(y)


def fit_task_router(features: torch.Tensor, fails: dict[str, torch.Tensor], routes: list[str], feature_block: int,
                    cfg: TaskRouterConfig) -> tuple[RouterMLP, dict]:
    """A linear router (hidden=0, sigmoid outputs) over `routes`: per route but `large`, the logistic regression of
    its failures (`fails[route]` [N] in {0, 1}) on the standardised features, at the cross-validated L2."""
    router = RouterMLP(features.shape[1], routes, hidden=0, feature_block=feature_block, target="task")
    router.mean.copy_(features.mean(0))
    router.std.copy_(features.std(0).clamp_min(1e-4))
    x = (features - router.mean) / router.std
    fit = {}
    with torch.no_grad():
        router.net[0].weight.zero_()
        router.net[0].bias.zero_()
    for j, route in enumerate(routes):
        if route == "large":
            continue
        y = fails[route]
        cv = {l2: _cv_log_loss(x, y, l2, cfg.folds, cfg.seed) for l2 in cfg.l2}
        best = min(cv, key=cv.get)
        w, b = _fit_logistic(x, y, best)
        with torch.no_grad():
            router.net[0].weight[j] = w
            router.net[0].bias[j] = b
        fit[route] = {"l2": best, "cv_log_loss": cv, "fail_rate": float(y.mean())}
    return router.eval().requires_grad_(False), fit


def train_task_router(catalog: RouteCatalog, stitch_dir: Path, cfg: TaskRouterConfig, out: Path) -> dict:
    """Label the code problems of the train and validation splits with each route's outcome (cached), fit the
    router on the prompts' states, calibrate its thresholds and save all in `out`."""
    from stitchllm.data.code_problems import code_problems
    from stitchllm.eval.humaneval import encode_problem
    from stitchllm.routing.router_train import threshold_table

    started = time.perf_counter()
    unknown = [r for r in cfg.routes if r not in {route.name for route in catalog.routes}]
    if unknown:
        raise StitchError(f"unknown route {unknown[0]!r} for the task router")
    problems = code_problems()
    if len(problems) < 4 * cfg.folds:
        raise StitchError(f"only {len(problems)} code problems found: too few to train a task router")
    context = catalog.family.large.max_positions
    prompts = [encode_problem(catalog.family.tokenizer, p, "chat", context) for p in problems]
    passed = label_outcomes(catalog, stitch_dir, problems, prompts, cfg)
    routes = [r.name for r in catalog.routes if r.name in cfg.routes]  # cheapest first, as the catalog orders them
    fails = {r: torch.tensor([0.0 if passed[(p["task_id"], r)] else 1.0 for p in problems]) for r in routes}
    features = prompt_features(catalog, prompts, cfg.feature_block)
    router, fit = fit_task_router(features, fails, routes, cfg.feature_block, cfg)
    costs = [catalog.relative_cost(catalog.route(r)) for r in routes]
    manifest = {
        "family": catalog.family.fingerprint(),
        "stitches": stitches_fingerprint(stitch_dir),
        "recipe": asdict(cfg),
        "fit": fit | {"problems": len(problems), "pass_rate": {r: 1 - float(fails[r].mean()) for r in routes}},
        "costs": costs,
        "thresholds": threshold_table(router, features, costs),
        "flops_per_prediction": router.flops(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    save_router(router, out, manifest)
    return manifest
