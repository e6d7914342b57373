"""KL to a teacher kept as its top-K log-probs plus one tail bucket: the sparse form a teacher cache stores.

Keeping the teacher's whole distribution costs V numbers per position (151,936 for Qwen: 300 KB in fp16), so
offline distillation keeps the teacher's top K (ids and log-probs) and one number for everything else, and trains
on the KL between the two distributions coarsened onto K + 1 bins: the teacher's K tokens one bin each, every
other token pooled into a "tail" bin:

    KL_K = sum_{i in top-K} p_i log(p_i / q_i) + P_tail log(P_tail / Q_tail)
    P_tail = 1 - sum_{i in top-K} p_i,  Q_tail = 1 - sum_{i in top-K} q_i  (the student's mass off the teacher's top K)

What it approximates: by the log-sum inequality the tail term is at most the full KL's sum over the tail tokens,
so KL_K <= KL, with equality when K = V or when the student spreads its tail mass in proportion to the teacher's.
The gradient still moves the student's tail mass to the teacher's, but no longer shapes it token by token; with
a peaked teacher (most of its mass in its top K, as a code model's next-token distribution usually is) the gap is
small (tests/test_teacher_cache.py measures it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from stitchllm.stitch.teacher_cache import CachedWindow


def teacher_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [n, V] fp32 -> top-k ids [n, k] int64 (most likely first), their log-probs [n, k], and the log of
    the mass outside them [n] (-inf when k = V). `logits` is overwritten: the tail is a logsumexp over the logits
    with the top k masked in place, so no second [n, V] tensor is made."""
    lse = torch.logsumexp(logits, dim=-1)  # [n]
    top, ids = logits.topk(k, dim=-1)  # [n, k]
    tail = torch.logsumexp(logits.scatter_(-1, ids, float("-inf")), dim=-1) - lse  # [n], exact even for a tiny tail
    return ids, top - lse[:, None], tail


def topk_kl(student_logits: torch.Tensor, cached: CachedWindow) -> torch.Tensor:
    """Mean over tokens of KL_K(teacher || student): student_logits [T, V]; `cached` holds the teacher's
    topk_ids [T, K], topk_logprobs [T, K] and tail_logprob [T]. Equals family.distill.kl_to_teacher when K = V."""
    logits = student_logits.float()
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # [T, 1]
    student_top = logits.gather(-1, cached.topk_ids) - lse  # [T, K]
    # the student's tail bin: its logits with the teacher's top K masked. A finite fill, not -inf: with K = V an
    # all -inf row would put exp(-inf + inf) = NaN into logsumexp's gradient
    masked = logits.scatter(-1, cached.topk_ids, torch.finfo(logits.dtype).min)  # [T, V]
    student_tail = torch.logsumexp(masked, dim=-1, keepdim=True) - lse  # [T, 1]
    student = torch.cat([student_top, student_tail], dim=-1)  # [T, K + 1]
    teacher = torch.cat([cached.topk_logprobs.float(), cached.tail_logprob.float()[:, None]], dim=-1)  # [T, K + 1]
    teacher = teacher - torch.logsumexp(teacher, dim=-1, keepdim=True)  # fp16 log-probs: make the bins sum to 1
    p = teacher.exp()
    # an empty bin (the tail when K = V, or a tail below fp32's range) adds nothing: 0 log 0 = 0
    return torch.where(p > 0, p * (teacher - student), 0.0).sum() / len(logits)
