"""`stitch build`: a least-squares or identity start, then distillation, for every stitch; cached by family."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from stitchllm.data.corpus import python_docs_text
from stitchllm.eval.quality import evaluate_routes
from stitchllm.eval.text import token_windows
from stitchllm.family.family import Family
from stitchllm.models.linear import dtype_name, resolve_matmul_dtype
from stitchllm.paths import stitchllm_home
from stitchllm.routing.executor import RouteExecutor
from stitchllm.routing.route import enumerate_routes, large_route, small_route, stitched_route
from stitchllm.stitch.frontier import dominated
from stitchllm.stitch.init import pair_fits
from stitchllm.stitch.layer import StitchLayer, stitch_key
from stitchllm.stitch.store import MANIFEST, save_stitches
from stitchllm.stitch.teacher_cache import TeacherCache, teacher_cache_root
from stitchllm.stitch.train import StitchTrainConfig, train_stitches

CALIBRATION_WINDOW = 512  # tokens per window of the least-squares calibration passes


@dataclass(frozen=True)
class StitchBuildConfig:
    """Which stitches to build and how; its hash decides whether a cached build can be reused."""

    cuts: tuple[int, ...] | None = None  # None: the defaults of `enumerate_routes`
    pairs: tuple[tuple[int, int], ...] | None = None  # explicit (cut, entry) candidates instead of `cuts`
    stitch_mlp: int = 0  # hidden width of each stitch's residual MLP (stitch/layer.py); 0: affine only
    block_map: bool = True  # a sibling derived from the large model: also its block-map routes (`entry_after`)
    screen: bool = True  # keep only the candidates on the validation quality/cost frontier
    calibration_tokens: int = 16384
    validation_tokens: int = 4096
    ridge: float = 1e-3
    identity_start: bool = True  # equal widths: also try the identity as a stitch's start, beside least squares
    train: StitchTrainConfig = field(default_factory=StitchTrainConfig)

    def fingerprint(self) -> str:
        recipe = asdict(self)
        if recipe["train"]["teacher_cache"] is None:  # builds from before the teacher cache keep their fingerprint
            del recipe["train"]["teacher_cache"]
        for fields, name, default in ((recipe, "pairs", None), (recipe, "stitch_mlp", 0),
                                      (recipe["train"], "precondition", False)):  # and from before these fields
            if fields[name] == default:
                del fields[name]
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def stitches_dir(family: Family) -> Path:
    fp = family.fingerprint()
    return stitchllm_home() / "stitches" / f"{fp['large']}-{fp['small']}"


def _validate(family: Family, stitches: dict[str, StitchLayer], routes, windows) -> dict[str, dict]:
    """Quality of every route (large and small included) against the large model."""
    rows = evaluate_routes(RouteExecutor(family, stitches), routes, [0.0] * len(routes), windows)
    return {row["name"]: {"kl": row["kl"], "ppl": row["ppl"], "top1_agree": row["top1_agree"]} for row in rows}


def identity_stitch(like: StitchLayer) -> StitchLayer:
    """The stitch that hands the large model's residual stream on unchanged (equal widths)."""
    layer = StitchLayer(like.proj.in_features, like.proj.out_features, like.cut, like.entry)
    layer.set_affine(torch.eye(like.proj.out_features), torch.zeros(like.proj.out_features))
    return layer


def best_start(starts: dict[str, dict[str, StitchLayer]], metrics: dict[str, dict[str, dict]], routes):
    """Per stitched route, the starting stitch with the lowest validation KL; returns the stitches, which start
    each route took, and the validation metrics of the chosen starts (whole models included)."""
    first = next(iter(starts))
    stitches, start_of, chosen = {}, {}, dict(metrics[first])
    for route in routes:
        if not route.stitches:
            continue
        name = min(starts, key=lambda s: metrics[s][route.name]["kl"])  # ties: the first (least squares)
        key = stitch_key(*route.stitches[0])
        stitches[key] = starts[name][key]
        start_of[route.name], chosen[route.name] = name, metrics[name][route.name]
    return stitches, start_of, chosen


def calibration_fits(family: Family, cfg: StitchBuildConfig, ids: torch.Tensor, pairs: list[tuple[int, int]]):
    """Least-squares statistics for the starts, on the stream's first `calibration_tokens`. With a teacher cache
    they are read from the training cache's first windows (made now where missing): the start costs no teacher
    pass of its own. Without, the large model runs over windows of 512."""
    if cfg.train.teacher_cache is None:
        return pair_fits(family, pairs, windows=list(ids[: cfg.calibration_tokens].split(CALIBRATION_WINDOW)))
    cache = training_cache(family, cfg, ids, {k for k, _ in pairs})
    windows = max(1, cfg.calibration_tokens // cfg.train.seq_len)
    cache.fill(family.large, windows)
    return pair_fits(family, pairs, cache=cache, cache_windows=windows)


def training_cache(family: Family, cfg: StitchBuildConfig, ids: torch.Tensor, cuts: set[int]) -> TeacherCache:
    """The teacher cache the stitches train from (stitch/train.py `cached_teacher` opens the same one)."""
    return TeacherCache(teacher_cache_root(), family.fingerprint()["large"], ids, cfg.train.seq_len,
                        cfg.train.teacher_cache.cuts_for(cuts), cfg.train.teacher_cache)


def build_stitches(family: Family, cfg: StitchBuildConfig, out: Path) -> dict:
    """Build (or reuse) the stitches of every candidate route, then keep those on the validation frontier.

    Each stitch starts from the better, on validation KL, of least squares (onto the small model's residual stream
    at the entry) and, for equal widths, the identity. A sibling pruned from the large model was healed to read
    a stream like the large model's, so the large stream itself often serves its top blocks better than a fit to
    what its own pruned bottom produces (docs/STITCHING.md, session 18). Training that makes a route worse on
    validation is undone.

    A candidate that costs as much as a kept route or more and is not better on validation KL and perplexity both
    is screened out (its metrics stay in the manifest under "screened_out"): with a depth-pruned sibling,
    relative-depth entries can skip whole runs of large blocks, and block-map entries can cost the same as a
    better route.
    """
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("recipe_fingerprint") == cfg.fingerprint() and manifest["family"] == family.fingerprint():
            return manifest
    started = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    configs = {"large": family.large.config, "small": family.small.config}
    block_map = family.small_block_map() if cfg.block_map else None
    if cfg.pairs:
        routes = [small_route(configs), large_route(configs)] + [stitched_route(configs, k, j) for k, j in cfg.pairs]
        routes.sort(key=lambda r: r.flops_per_token(configs))
    else:
        routes = enumerate_routes(configs, list(cfg.cuts) if cfg.cuts else None, block_map)  # small ... large
    pairs = [r.stitches[0] for r in routes if r.stitches]
    ids = torch.tensor(family.tokenizer(python_docs_text("train"), add_special_tokens=False)["input_ids"])
    val_windows = token_windows(python_docs_text("validation"), family.tokenizer, 512, cfg.validation_tokens)

    least_squares = {}
    for (cut, entry), fit in calibration_fits(family, cfg, ids, pairs).items():
        layer = StitchLayer(family.large.config.hidden_size, family.small.config.hidden_size, cut, entry,
                            cfg.stitch_mlp)
        layer.set_affine(*fit.solve(cfg.ridge))
        least_squares[layer.key] = layer
    starts = {"least-squares": least_squares}
    if cfg.identity_start and family.large.config.hidden_size == family.small.config.hidden_size:
        starts["identity"] = {key: identity_stitch(s) for key, s in least_squares.items()}
    metrics_starts = {name: _validate(family, s, routes, val_windows) for name, s in starts.items()}
    stitches, start_of, metrics_init = best_start(starts, metrics_starts, routes)
    save_stitches(stitches, out, "init.safetensors")  # every candidate; the manifest names the ones kept
    before = {key: s.tensors() for key, s in stitches.items()}
    # with a teacher cache the start's windows are trained on too (they are the train split, and cost no pass
    # then); without, training begins after them, as before the cache
    train_kl = train_stitches(family, stitches, ids if cfg.train.teacher_cache else ids[cfg.calibration_tokens:],
                              cfg.train)
    metrics_trained = _validate(family, stitches, routes, val_windows)
    untrained = set()  # training that made a route worse on validation is undone: its start is kept
    for route in routes:
        if route.stitches and metrics_trained[route.name]["kl"] > metrics_init[route.name]["kl"]:
            key = stitch_key(*route.stitches[0])
            stitches[key].load_tensors(before[key])
            metrics_trained[route.name] = metrics_init[route.name]
            untrained.add(route.name)

    costs = {r.name: r.flops_per_token(configs) for r in routes}
    dropped = dominated(metrics_trained, costs) if cfg.screen else set()
    pairs = [r.stitches[0] for r in routes if r.stitches and r.name not in dropped]
    save_stitches({key: s for key, s in stitches.items() if (s.cut, s.entry) in pairs}, out, "trained.safetensors")

    manifest = {
        "family": family.fingerprint(),
        "recipe_fingerprint": cfg.fingerprint(),
        "recipe": asdict(cfg),
        "cuts": [list(p) for p in pairs],
        "files": {"init": "init.safetensors", "trained": "trained.safetensors"},
        "training": {"text": "python stdlib docstrings, train split", "steps": cfg.train.steps,
                     "tokens": cfg.train.steps * cfg.train.batch * cfg.train.seq_len,
                     "calibration_tokens": cfg.calibration_tokens, "final_train_kl": train_kl,
                     "matmul_dtype": dtype_name(resolve_matmul_dtype(cfg.train.matmul_dtype))},
        "validation": {"starts": {start: {n: m for n, m in metrics.items() if n in start_of and n not in dropped}
                                  for start, metrics in metrics_starts.items()},
                       "init": {n: m for n, m in metrics_init.items() if n not in dropped},
                       "trained": {n: m for n, m in metrics_trained.items() if n not in dropped}},
        "screened_out": {n: {"init": metrics_init[n], "trained": metrics_trained[n]} for n in sorted(dropped)},
        "start": {n: start for n, start in start_of.items() if n not in dropped},
        "training_undone": sorted(untrained - dropped),
        "seconds": round(time.perf_counter() - started, 1),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return manifest
