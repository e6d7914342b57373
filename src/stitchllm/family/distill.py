"""Heal a pruned model by knowledge distillation: KL(parent's next-token distribution || child's), parent frozen.

Optionally route-aware: the child's top blocks are also trained to finish from the parent's own residual stream
(the stitched routes L[0:k] -> child[j:] that serving will run), not only from the child's bottom blocks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from stitchllm.models.batch import ForwardBatch
from stitchllm.models.decoder import DecoderModel
from stitchllm.models.linear import dtype_name, resolve_matmul_dtype, training_autocast


@dataclass(frozen=True, slots=True)
class DistillConfig:
    """Healing schedule: `steps` AdamW steps of `batch` sequences of `seq_len` tokens, cosine-decayed lr."""

    steps: int
    batch: int = 8
    micro_batch: int = 2  # sequences per forward/backward; gradients accumulate over batch / micro_batch of them
    seq_len: int = 256
    lr: float = 3e-4
    warmup: int = 8
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 20
    matmul_dtype: str = "auto"  # the student's matmuls: float32, bfloat16 (autocast), auto (bf16 if native)
    route_weight: float = 0.0  # weight of the stitched-route KL beside the child's own (0: the child alone)

    def lr_at(self, step: int) -> float:
        warmup = min(self.warmup, self.steps // 4)  # a short run must still reach its peak lr
        if step < warmup:
            return self.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, self.steps - warmup)
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def kl_to_teacher(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student); both [T, V]."""
    teacher_logp = F.log_softmax(teacher_logits, dim=-1)
    student_logp = F.log_softmax(student_logits, dim=-1)
    return F.kl_div(student_logp, teacher_logp, log_target=True, reduction="batchmean")


def teacher_pass(teacher: DecoderModel, ids: torch.Tensor, batch: ForwardBatch, cuts: set[int]):
    """ids [T] -> (logits [T, V], {k: residual stream after the teacher's first k blocks [T, D]} for k in cuts)."""
    states = teacher.residual_states(ids, batch, cuts)
    return teacher.head(teacher.norm(states.pop(teacher.config.num_layers))), states


def sequence_batches(ids: torch.Tensor, cfg: DistillConfig) -> torch.Tensor:
    """Cut a long id stream into [N, seq_len] training sequences, shuffled by the seed."""
    n = len(ids) // cfg.seq_len
    seqs = ids[: n * cfg.seq_len].view(n, cfg.seq_len)
    return seqs[torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))]


def distill(
    teacher: DecoderModel, student: DecoderModel, train_ids: torch.Tensor, cfg: DistillConfig,
    checkpoint: Path | None = None, routes: list[tuple[int, int]] = (),
) -> dict:
    """Train every student weight to match the teacher; resumes from `checkpoint` if one is there.

    `routes`: (cut, entry) pairs of the stitched routes to heal too (same hidden width, identity stitch): each
    micro-batch also runs the student's blocks from `entry` on the teacher's state after `cut` blocks, one route
    per micro-batch in turn, and adds `route_weight` x that route's KL. Healing the child alone adapts its top
    blocks to its own pruned bottom, and the stitched routes then lose most of what the large bottom brings."""
    torch.manual_seed(cfg.seed)
    dtype = resolve_matmul_dtype(cfg.matmul_dtype)
    seqs = sequence_batches(train_ids, cfg)
    student.train().requires_grad_(True)
    optim = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, losses, route_losses = 0, [], []
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)
        student.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        step, losses, route_losses = state["step"], state["losses"], state.get("route_losses", [])
    # Micro-batches because every vocabulary-wide tensor scales with them: at 8 x 256 tokens each [T, 49152] fp32
    # tensor is 400 MB and a step took 38 s on this machine, at 2 x 256 the same 8 sequences take 16 s.
    micro = ForwardBatch(list(range(cfg.micro_batch)), [0] * cfg.micro_batch, [cfg.seq_len] * cfg.micro_batch)
    parts = cfg.batch // cfg.micro_batch
    use_routes = cfg.route_weight > 0 and len(routes) > 0
    start = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc="distill", unit="step")
    while step < cfg.steps:
        rows = torch.arange(step * cfg.batch, (step + 1) * cfg.batch) % len(seqs)
        for group in optim.param_groups:
            group["lr"] = cfg.lr_at(step)
        optim.zero_grad(set_to_none=True)
        loss = route_loss = 0.0
        for i, part in enumerate(rows.view(parts, cfg.micro_batch)):
            ids = seqs[part].reshape(-1)  # [micro_batch * seq_len]
            cut, entry = routes[(step * parts + i) % len(routes)] if use_routes else (None, None)
            with torch.inference_mode():
                teacher_logits, states = teacher_pass(teacher, ids, micro, {cut} if use_routes else set())
            teacher_logits = teacher_logits.clone()  # [T, V], out of inference mode
            with training_autocast(dtype):
                logits = student(ids, micro)  # [T, V], bf16 under autocast
            part_loss = kl_to_teacher(teacher_logits, logits.float()) / parts
            loss += float(part_loss.detach())
            if use_routes:
                with training_autocast(dtype):
                    hidden = student.run_blocks(states[cut].clone(), micro, None, entry)  # [T, D]
                    route_logits = student.head(student.norm(hidden))  # [T, V]
                route_part = kl_to_teacher(teacher_logits, route_logits.float()) / parts
                route_loss += float(route_part.detach())
                part_loss = part_loss + cfg.route_weight * route_part
            part_loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optim.step()
        step += 1
        losses.append(loss)
        route_losses.append(route_loss)
        bar.update(1)
        bar.set_postfix(kl=f"{loss:.3f}", **({"route_kl": f"{route_loss:.3f}"} if use_routes else {}))
        if checkpoint is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            torch.save({"step": step, "model": student.state_dict(), "optim": optim.state_dict(),
                        "losses": losses, "route_losses": route_losses}, checkpoint)
    bar.close()
    student.eval().requires_grad_(False)
    report = {"steps": step, "tokens": step * cfg.batch * cfg.seq_len, "kl_first": losses[0] if losses else None,
              "kl_last": _tail_mean(losses), "seconds_this_run": time.perf_counter() - start,
              "matmul_dtype": dtype_name(dtype)}
    if use_routes:  # the mean over the routes taken in the last steps (one per micro-batch, in turn)
        report |= {"routes": [list(r) for r in routes], "route_weight": cfg.route_weight,
                   "route_kl_first": route_losses[0] if route_losses else None,
                   "route_kl_last": _tail_mean(route_losses)}
    return report


def _tail_mean(values: list[float], n: int = 5) -> float:
    return sum(values[-n:]) / max(1, len(values[-n:]))
