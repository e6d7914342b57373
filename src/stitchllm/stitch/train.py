"""Distil stitching layers: KL(large model || route), every pretrained weight frozen, only stitches learn.

All stitches train together and share one teacher per step: the large model's distribution and its residual
stream at every cut, so each extra stitch costs only its own small-model blocks. The teacher is either run live at
every step, or read from a TeacherCache that ran the large model once per window (`teacher_cache`): then a step
runs no large block at all, and the loss is the top-K + tail KL of stitch/sparse_kl.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from stitchllm.family.distill import kl_to_teacher
from stitchllm.family.family import Family
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.linear import resolve_matmul_dtype, training_autocast
from stitchllm.stitch.adapters import adapted
from stitchllm.stitch.layer import StitchLayer
from stitchllm.stitch.sparse_kl import topk_kl
from stitchllm.stitch.teacher_cache import CachedWindow, TeacherCache, TeacherCacheConfig, teacher_cache_root

# One step's teacher: the ids [T], the large model's residual stream {cut k: [T, d_L]}, and the loss of a route's
# logits [T, V] against the teacher's distribution on those tokens.
TeacherStep = tuple[torch.Tensor, dict[int, torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


@dataclass(frozen=True, slots=True)
class StitchTrainConfig:
    """Schedule of stitch distillation; `lm_weight` mixes in the next-token loss on the text itself."""

    steps: int = 60
    batch: int = 2
    seq_len: int = 256  # also the teacher cache's window: a cached state was computed with exactly this context
    lr: float = 1e-3
    lm_weight: float = 0.0
    seed: int = 0
    matmul_dtype: str = "auto"  # the routes' matmuls while training: auto = bf16 autocast where the CPU has native
    # bf16 dot products (the large model's teacher pass keeps its packed precision)
    teacher_cache: TeacherCacheConfig | None = None  # None: run the large model at every step
    precondition: bool = False  # train each affine map on its input scaled to unit RMS per channel (StitchLayer)

    def lr_at(self, step: int) -> float:
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(1, self.steps))))


def live_teacher(family: Family, ids: torch.Tensor, cfg: StitchTrainConfig, cuts: set[int]) -> Iterator[TeacherStep]:
    """The large model run at every step on `batch` sequences drawn, shuffled by the seed, from the whole stream."""
    large = family.large
    n = len(ids) // cfg.seq_len
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    seqs = ids[: n * cfg.seq_len].view(n, cfg.seq_len)[order]  # [n, seq_len]
    batch = ForwardBatch(list(range(cfg.batch)), [0] * cfg.batch, [cfg.seq_len] * cfg.batch)
    for step in range(cfg.steps):
        step_ids = seqs[torch.arange(step * cfg.batch, (step + 1) * cfg.batch) % n].reshape(-1)
        with torch.inference_mode():
            states = large.residual_states(step_ids, batch, cuts)
            teacher = large.head(large.norm(states[large.config.num_layers]))  # [T, V]
        teacher, states = teacher.clone(), {k: v.clone() for k, v in states.items()}  # leave inference mode
        yield step_ids, states, partial(kl_to_teacher, teacher)
        del teacher, states  # one [T, V] teacher alive at a time: this one goes before the next is made


def cached_teacher(family: Family, ids: torch.Tensor, cfg: StitchTrainConfig, cuts: set[int],
                   root: Path) -> Iterator[TeacherStep]:
    """The teacher read from a cache of the stream's first steps x batch windows (made now where missing),
    visited in an order shuffled by the seed: more steps extend the cache, they do not invalidate it."""
    cache = TeacherCache(root, family.fingerprint()["large"], ids, cfg.seq_len, cfg.teacher_cache.cuts_for(cuts),
                         cfg.teacher_cache)
    used = min(cache.num_windows, cfg.steps * cfg.batch)
    cache.fill(family.large, used)
    order = torch.randperm(used, generator=torch.Generator().manual_seed(cfg.seed))

    def step_of(step: int) -> TeacherStep:
        rows = order[torch.arange(step * cfg.batch, (step + 1) * cfg.batch) % used]
        window = CachedWindow.cat(list(cache.read_windows(rows)))
        return window.ids, window.states, lambda logits: topk_kl(logits, window)

    return (step_of(step) for step in range(cfg.steps))


def train_stitches(family: Family, stitches: dict[str, StitchLayer], ids: torch.Tensor, cfg: StitchTrainConfig,
                   cache_root: Path | None = None, after_step: Callable[[int], None] | None = None) -> dict:
    """Train every stitch in place on the id stream; returns the mean training loss per stitch over the last steps
    (the full KL with a live teacher, the top-K + tail KL with a cached one). `cache_root`: where the teacher cache
    lives (default: <stitchllm home>/teacher); `after_step(n)` is called after the n-th step (1-based), with the
    stitches in their training form (for measuring them along the way)."""
    dtype = resolve_matmul_dtype(cfg.matmul_dtype)
    cuts = {s.cut for s in stitches.values()}
    if cfg.teacher_cache is None:
        teacher = live_teacher(family, ids, cfg, cuts)
    else:
        teacher = cached_teacher(family, ids, cfg, cuts, cache_root or teacher_cache_root())
    params = [p for s in stitches.values() for p in s.parameters()]
    for p in params:
        p.requires_grad_(True)
    optim = torch.optim.Adam(params, lr=cfg.lr)
    batch = ForwardBatch(list(range(cfg.batch)), [0] * cfg.batch, [cfg.seq_len] * cfg.batch)
    small = family.small
    history: dict[str, list[float]] = {key: [] for key in stitches}
    for step, (step_ids, states, loss_of) in zip(tqdm(range(cfg.steps), desc="stitch training", unit="step"), teacher):
        if step == 0 and cfg.precondition:  # each channel's RMS on the first batch: a fixed scale, not a statistic
            for stitch in stitches.values():
                stitch.precondition(states[stitch.cut].pow(2).mean(0).sqrt().clamp_min(1e-6))
        for group in optim.param_groups:
            group["lr"] = cfg.lr_at(step)
        optim.zero_grad(set_to_none=True)
        for key, stitch in stitches.items():
            with training_autocast(dtype), adapted(small, [(slice(None), stitch.adapters)]):
                h = small.run_blocks(stitch(states[stitch.cut]), batch, None, stitch.entry)
                logits = small.head(small.norm(h)).float()  # [T, V]
            loss = loss_of(logits)
            if cfg.lm_weight:
                targets = step_ids.view(cfg.batch, -1)[:, 1:].reshape(-1)
                lm = F.cross_entropy(logits.view(cfg.batch, cfg.seq_len, -1)[:, :-1].reshape(-1, logits.shape[-1]),
                                     targets)
                loss = loss + cfg.lm_weight * lm
            loss.backward()  # one graph per stitch: memory stays that of a single route
            history[key].append(float(loss.detach()))
        optim.step()
        if after_step is not None:
            after_step(step + 1)
        del states, loss_of  # the step's teacher (a [T, V] tensor, live) goes before the next one is made
    for s in stitches.values():
        s.requires_grad_(False)
        s.fold()
        s.pack()
    return {key: sum(v[-5:]) / max(1, len(v[-5:])) for key, v in history.items()}
