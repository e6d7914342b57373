"""`stitch build`: a least-squares or identity start, then distillation, for every stitch; cached by family."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from stitchllm.data.corpus import python_code_text, python_docs_text
from stitchllm.eval.quality import evaluate_routes
from stitchllm.eval.text import interleave_windows, token_windows
from stitchllm.errors import StitchError
from stitchllm.family.family import Family
from stitchllm.models.linear import dtype_name, resolve_matmul_dtype
from stitchllm.paths import stitchllm_home
from stitchllm.routing.executor import RouteExecutor
from stitchllm.routing.route import enumerate_routes, large_route, small_route, stitched_route
from stitchllm.stitch.adapters import BlockAdapters
from stitchllm.stitch.frontier import dominated
from stitchllm.stitch.init import pair_fits
from stitchllm.stitch.layer import StitchLayer, stitch_key
from stitchllm.stitch.store import MANIFEST, save_stitches
from stitchllm.stitch.teacher_cache import TeacherCache, teacher_cache_root
from stitchllm.stitch.train import StitchTrainConfig, train_stitches

CALIBRATION_WINDOW = 512  # tokens per window of the least-squares calibration passes
STORE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TEXT_NAMES = {"docs": "python stdlib docstrings, train split",
              "docs+code": "python stdlib docstrings and source code, train split, window by window in turn"}


@dataclass(frozen=True)
class StitchBuildConfig:
    """Which stitches to build and how; its hash decides whether a cached build can be reused."""

    cuts: tuple[int, ...] | None = None  # None: the defaults of `enumerate_routes`
    pairs: tuple[tuple[int, int], ...] | None = None  # explicit (cut, entry) candidates instead of `cuts`
    stitch_mlp: int = 0  # hidden width of each stitch's residual MLP (stitch/layer.py); 0: affine only
    adapter_rank: int = 0  # rank of each route's own updates of the small blocks it runs (stitch/adapters.py)
    block_map: bool = True  # a sibling derived from the large model: also its block-map routes (`entry_after`)
    screen: bool = True  # keep only the candidates on the validation quality/cost frontier
    text: str = "docs"  # training text from the stdlib's train split: "docs" (docstrings) or "docs+code" (its
    # docstrings and its source code, window by window in turn: see `training_ids`)
    calibration_tokens: int = 16384
    validation_tokens: int = 4096
    ridge: float = 1e-3
    identity_start: bool = True  # equal widths: also try the identity as a stitch's start, beside least squares
    store_dtype: str = "float32"  # how the stitch files keep weights: "bfloat16" halves them (what a repository
    # can ship); every start and trained stitch is rounded to it before it is validated, so the manifest's metrics
    # are those of the files
    train: StitchTrainConfig = field(default_factory=StitchTrainConfig)

    def __post_init__(self) -> None:
        if self.text not in TEXT_NAMES:
            raise StitchError(f"unknown stitch training text {self.text!r}: use {' or '.join(TEXT_NAMES)}")
        if self.store_dtype not in STORE_DTYPES:
            raise StitchError(f"unknown stitch store dtype {self.store_dtype!r}: use {' or '.join(STORE_DTYPES)}")

    def fingerprint(self) -> str:
        recipe = asdict(self)
        if recipe["train"]["teacher_cache"] is None:  # builds from before the teacher cache keep their fingerprint
            del recipe["train"]["teacher_cache"]
        elif recipe["train"]["teacher_cache"]["matmul_dtype"] == "float32":  # and from before its bf16 pass
            del recipe["train"]["teacher_cache"]["matmul_dtype"]
        for fields, name, default in ((recipe, "pairs", None), (recipe, "stitch_mlp", 0), (recipe, "adapter_rank", 0),
                                      (recipe, "text", "docs"), (recipe, "store_dtype", "float32"),
                                      (recipe["train"], "precondition", False)):  # and from before these fields
            if fields[name] == default:
                del fields[name]
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


SHIPPED = Path(__file__).resolve().parents[1] / "shipped"  # stitches that ship with the package, by family


def _family_name(family: Family) -> str:
    fp = family.fingerprint()
    return f"{fp['large']}-{fp['small']}"


def stitches_dir(family: Family) -> Path:
    """Where `stitch build` writes (and finds) this family's stitches."""
    return stitchllm_home() / "stitches" / _family_name(family)


def serving_stitches_dir(family: Family) -> Path:
    """The stitches a family serves with: its own build where there is one, else those shipped in the package for
    exactly these two models (the default family's: `make run` then trains nothing), else the build's place."""
    built, shipped = stitches_dir(family), SHIPPED / _family_name(family)
    return shipped if not (built / MANIFEST).is_file() and (shipped / MANIFEST).is_file() else built


@torch.no_grad()
def _round(stitches: dict[str, StitchLayer], dtype: str) -> None:
    """Round every stitch's weights to `dtype` in place (they stay fp32 tensors): what its files will hold."""
    if dtype != "float32":
        for stitch in stitches.values():
            for p in stitch.parameters():
                p.copy_(p.to(STORE_DTYPES[dtype]))
            stitch.pack()


def _validate(family: Family, stitches: dict[str, StitchLayer], routes, windows) -> dict[str, dict]:
    """Quality of every route (large and small included) against the large model."""
    rows = evaluate_routes(RouteExecutor(family, stitches), routes, [0.0] * len(routes), windows)
    return {row["name"]: {"kl": row["kl"], "ppl": row["ppl"], "top1_agree": row["top1_agree"]} for row in rows}


def identity_stitch(like: StitchLayer) -> StitchLayer:
    """The stitch that hands the large model's residual stream on unchanged (equal widths)."""
    layer = StitchLayer(like.proj.in_features, like.proj.out_features, like.cut, like.entry)
    layer.set_affine(torch.eye(like.proj.out_features), torch.zeros(like.proj.out_features))
    layer.adapters = copy.deepcopy(like.adapters)  # a start of its own: the two starts train apart
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


def training_ids(family: Family, cfg: StitchBuildConfig) -> torch.Tensor:
    """The train split's token stream [n] the starts are fitted on and the stitches trained on."""
    def tokens(text: str) -> torch.Tensor:
        return torch.tensor(family.tokenizer(text, add_special_tokens=False)["input_ids"])

    docs = tokens(python_docs_text("train"))
    if cfg.text == "docs":
        return docs
    return interleave_windows(docs, tokens(python_code_text("train")), cfg.train.seq_len)


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
    ids = training_ids(family, cfg)
    val_windows = token_windows(python_docs_text("validation"), family.tokenizer, 512, cfg.validation_tokens)

    least_squares = {}
    for (cut, entry), fit in calibration_fits(family, cfg, ids, pairs).items():
        layer = StitchLayer(family.large.config.hidden_size, family.small.config.hidden_size, cut, entry,
                            cfg.stitch_mlp)
        layer.set_affine(*fit.solve(cfg.ridge))
        if cfg.adapter_rank:
            layer.adapters = BlockAdapters(family.small, entry, cfg.adapter_rank, seed=cfg.train.seed)
        least_squares[layer.key] = layer
    starts = {"least-squares": least_squares}
    if cfg.identity_start and family.large.config.hidden_size == family.small.config.hidden_size:
        starts["identity"] = {key: identity_stitch(s) for key, s in least_squares.items()}
    for start in starts.values():
        _round(start, cfg.store_dtype)
    metrics_starts = {name: _validate(family, s, routes, val_windows) for name, s in starts.items()}
    stitches, start_of, metrics_init = best_start(starts, metrics_starts, routes)
    # every candidate; the manifest names the ones kept
    save_stitches(stitches, out, "init.safetensors", STORE_DTYPES[cfg.store_dtype])
    before = {key: s.tensors() for key, s in stitches.items()}
    # with a teacher cache the start's windows are trained on too (they are the train split, and cost no pass
    # then); without, training begins after them, as before the cache
    train_kl = train_stitches(family, stitches, ids if cfg.train.teacher_cache else ids[cfg.calibration_tokens:],
                              cfg.train)
    _round(stitches, cfg.store_dtype)
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
    save_stitches({key: s for key, s in stitches.items() if (s.cut, s.entry) in pairs}, out, "trained.safetensors",
                  STORE_DTYPES[cfg.store_dtype])

    manifest = {
        "family": family.fingerprint(),
        "recipe_fingerprint": cfg.fingerprint(),
        "recipe": asdict(cfg),
        "cuts": [list(p) for p in pairs],
        "files": {"init": "init.safetensors", "trained": "trained.safetensors"},
        "training": {"text": TEXT_NAMES[cfg.text], "steps": cfg.train.steps,
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
