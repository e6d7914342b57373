"""Route quality on real text: perplexity, top-1 agreement with the large model, KL(large || route)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from stitchllm.eval.perplexity import FullLogitsFn, packed_windows, window_logits
from stitchllm.models.batch import ForwardBatch


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

    def add(self, logits: torch.Tensor, ref_logp: torch.Tensor, target: torch.Tensor) -> None:
        """logits [n, V] of predictions for target [n], against the reference log-probs [n, V]."""
        logp = F.log_softmax(logits.float(), dim=-1)
        self.nll += float(F.nll_loss(logp, target, reduction="sum"))
        self.agree += int((logp.argmax(-1) == ref_logp.argmax(-1)).sum())
        self.kl += float(F.kl_div(logp, ref_logp, log_target=True, reduction="sum"))
        self.tokens += len(target)

    def row(self, name: str, cost: float) -> dict:
        n = max(1, self.tokens)
        return {"name": name, "cost": round(cost, 4), "ppl": math.exp(self.nll / n), "tokens": self.tokens,
                "top1_agree": self.agree / n, "kl": self.kl / n}


def _per_window(logits: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    """Packed logits [T, V] -> per window, the predictions of its next tokens [n_i - 1, V]."""
    return [lg[:-1] for lg in logits.split(lengths)]


@torch.inference_mode()
def evaluate(candidates: list[Candidate], reference: FullLogitsFn, windows: list[torch.Tensor]) -> list[dict]:
    """Score independent candidates on the same windows against a reference model; rows ordered by cost."""
    totals = {c.name: QualityTotals() for c in candidates}
    for group in tqdm(list(packed_windows(windows)), desc="eval", unit="pass", leave=False):
        targets = [w[1:] for w in group]
        ref = [lg[:-1] for lg in window_logits(reference, group)]
        ref_logp = [F.log_softmax(r.float(), dim=-1) for r in ref]
        for c in candidates:
            got = ref if c.full_logits is reference else [lg[:-1] for lg in window_logits(c.full_logits, group)]
            for logits, lp, target in zip(got, ref_logp, targets):
                totals[c.name].add(logits, lp, target)
    return sorted((totals[c.name].row(c.name, c.cost) for c in candidates), key=lambda r: r["cost"])


@torch.inference_mode()
def evaluate_routes(executor, routes: list, costs: list[float], windows: list[torch.Tensor]) -> list[dict]:
    """Score routes of one family, running the large model once per pass and finishing every route from its
    states (so k shared blocks are computed once, not once per route); rows ordered by cost."""
    totals = {r.name: QualityTotals() for r in routes}
    cuts = {cut for r in routes for cut, _ in r.stitches}
    large = executor.family.large
    for group in tqdm(list(packed_windows(windows)), desc="eval", unit="pass", leave=False):
        lengths = [len(w) for w in group]
        ids = torch.cat(group)
        batch = ForwardBatch(list(range(len(group))), [0] * len(group), lengths)
        states = executor.large_pass(ids, batch, cuts)
        ref_logits = _per_window(large.head(large.norm(states[large.config.num_layers])), lengths)
        ref_logp = [F.log_softmax(r, dim=-1) for r in ref_logits]
        targets = [w[1:] for w in group]
        for route in routes:
            logits = _per_window(executor.logits(route, executor.finish(route, states, ids, batch)), lengths)
            for lg, lp, target in zip(logits, ref_logp, targets):
                totals[route.name].add(lg, lp, target)
    rows = [totals[r.name].row(r.name, c) for r, c in zip(routes, costs)]
    return sorted(rows, key=lambda r: r["cost"])
