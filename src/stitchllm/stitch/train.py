"""Distil stitching layers: KL(large model || route), every pretrained weight frozen, only stitches learn.

All stitches train together and share one forward pass of the large model per step: it yields both the teacher's
distribution and the residual stream at every cut, so each extra stitch costs only its own small-model blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from stitchllm.family.distill import kl_to_teacher
from stitchllm.family.family import Family
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.linear import resolve_matmul_dtype, training_autocast
from stitchllm.routing.executor import RouteExecutor
from stitchllm.stitch.layer import StitchLayer


@dataclass(frozen=True, slots=True)
class StitchTrainConfig:
    """Schedule of stitch distillation; `lm_weight` mixes in the next-token loss on the text itself."""

    steps: int = 60
    batch: int = 2
    seq_len: int = 256
    lr: float = 1e-3
    lm_weight: float = 0.0
    seed: int = 0
    matmul_dtype: str = "auto"  # the routes' matmuls while training: auto = bf16 autocast where the CPU has native
    # bf16 dot products (the large model's teacher pass keeps its packed precision)

    def lr_at(self, step: int) -> float:
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(1, self.steps))))


def train_stitches(family: Family, stitches: dict[str, StitchLayer], ids: torch.Tensor, cfg: StitchTrainConfig) -> dict:
    """Train every stitch in place on the id stream; returns the mean training KL per stitch over the last steps."""
    dtype = resolve_matmul_dtype(cfg.matmul_dtype)
    n = len(ids) // cfg.seq_len
    seqs = ids[: n * cfg.seq_len].view(n, cfg.seq_len)[torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))]
    params = [p for s in stitches.values() for p in s.parameters()]
    for p in params:
        p.requires_grad_(True)
    optim = torch.optim.Adam(params, lr=cfg.lr)
    batch = ForwardBatch(list(range(cfg.batch)), [0] * cfg.batch, [cfg.seq_len] * cfg.batch)
    large, small = family.large, family.small
    executor = RouteExecutor(family, stitches)
    history: dict[str, list[float]] = {key: [] for key in stitches}
    for step in tqdm(range(cfg.steps), desc="stitch training", unit="step"):
        rows = torch.arange(step * cfg.batch, (step + 1) * cfg.batch) % n
        step_ids = seqs[rows].reshape(-1)
        with torch.inference_mode():
            states = executor.large_pass(step_ids, batch, {s.cut for s in stitches.values()})
            teacher = large.head(large.norm(states[large.config.num_layers]))  # [T, V]
        teacher, states = teacher.clone(), {k: v.clone() for k, v in states.items()}  # leave inference mode
        for group in optim.param_groups:
            group["lr"] = cfg.lr_at(step)
        optim.zero_grad(set_to_none=True)
        for key, stitch in stitches.items():
            with training_autocast(dtype):
                h = small.run_blocks(stitch(states[stitch.cut]), batch, None, stitch.entry)
                logits = small.head(small.norm(h)).float()  # [T, V]
            loss = kl_to_teacher(teacher, logits)
            if cfg.lm_weight:
                targets = step_ids.view(cfg.batch, -1)[:, 1:].reshape(-1)
                lm = F.cross_entropy(logits.view(cfg.batch, cfg.seq_len, -1)[:, :-1].reshape(-1, logits.shape[-1]),
                                     targets)
                loss = loss + cfg.lm_weight * lm
            loss.backward()  # one graph per stitch: memory stays that of a single route
            history[key].append(float(loss.detach()))
        optim.step()
    for s in stitches.values():
        s.requires_grad_(False)
        s.proj.pack()
    return {key: sum(v[-5:]) / max(1, len(v[-5:])) for key, v in history.items()}
