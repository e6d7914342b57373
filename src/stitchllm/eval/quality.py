"""Route quality on real text: perplexity, top-1 agreement with the large model, KL(large || route)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from stitchllm.eval.perplexity import FullLogitsFn, packed_windows, window_logits


@dataclass(slots=True)
class Candidate:
    """Something to score: a name, its cost relative to the large model, and how to compute its logits."""

    name: str
    cost: float
    full_logits: FullLogitsFn


@dataclass(slots=True)
class QualityTotals:
    nll: float = 0.0
    agree: int = 0
    kl: float = 0.0
    tokens: int = 0

    def row(self, c: Candidate) -> dict:
        n = max(1, self.tokens)
        return {"name": c.name, "cost": round(c.cost, 4), "ppl": math.exp(self.nll / n), "tokens": self.tokens,
                "top1_agree": self.agree / n, "kl": self.kl / n}


@torch.inference_mode()
def evaluate(candidates: list[Candidate], reference: FullLogitsFn, windows: list[torch.Tensor]) -> list[dict]:
    """Score every candidate on the same windows against the reference (large) model; rows ordered by cost."""
    totals = {c.name: QualityTotals() for c in candidates}
    for group in tqdm(list(packed_windows(windows)), desc="eval", unit="pass", leave=False):
        targets = [w[1:] for w in group]
        ref = [logits[:-1] for logits in window_logits(reference, group)]
        ref_logp = [F.log_softmax(r.float(), dim=-1) for r in ref]
        for c in candidates:
            got = ref if c.full_logits is reference else [lg[:-1] for lg in window_logits(c.full_logits, group)]
            t = totals[c.name]
            for logits, ref_lp, target in zip(got, ref_logp, targets):
                logp = F.log_softmax(logits.float(), dim=-1)
                t.nll += float(F.nll_loss(logp, target, reduction="sum"))
                t.agree += int((logp.argmax(-1) == ref_lp.argmax(-1)).sum())
                t.kl += float(F.kl_div(logp, ref_lp, log_target=True, reduction="sum"))
                t.tokens += len(target)
    return sorted((totals[c.name].row(c) for c in candidates), key=lambda r: r["cost"])
