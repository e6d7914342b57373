"""Route quality on real text: perplexity, top-1 agreement with the large model, KL(large || route).

Scoring runs each pass's blocks once and then the heads in chunks of rows: a vocabulary-wide tensor (151,936
columns for Qwen: 0.6 MB per token in fp32) exists for `HEAD_CHUNK` tokens at a time, never for a whole pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from stitchllm.eval.perplexity import packed_windows
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.decoder import DecoderModel

HEAD_CHUNK = 64  # prediction rows per head call: [64, V] logits and log-probs at a time (40 MB each for Qwen)
HeadFn = Callable[[torch.Tensor], torch.Tensor]  # final hidden [n, d] -> logits [n, V] (final norm + head)


@dataclass(slots=True)
class QualityTotals:
    nll: float = 0.0
    agree: int = 0
    kl: float = 0.0
    tokens: int = 0

    def add(self, logits: torch.Tensor | None, ref_logp: torch.Tensor, target: torch.Tensor) -> None:
        """logits [n, V] of predictions for target [n], against the reference log-probs [n, V] (None: these
        predictions are the reference's own, KL 0 and full agreement)."""
        if logits is None:
            self.nll += float(F.nll_loss(ref_logp, target, reduction="sum"))
            self.agree += len(target)
        else:
            logp = F.log_softmax(logits.float(), dim=-1)
            self.nll += float(F.nll_loss(logp, target, reduction="sum"))
            self.agree += int((logp.argmax(-1) == ref_logp.argmax(-1)).sum())
            self.kl += float(F.kl_div(logp, ref_logp, log_target=True, reduction="sum"))
        self.tokens += len(target)

    def row(self, name: str, cost: float) -> dict:
        n = max(1, self.tokens)
        return {"name": name, "cost": round(cost, 4), "ppl": math.exp(self.nll / n), "tokens": self.tokens,
                "top1_agree": self.agree / n, "kl": self.kl / n}


def prediction_rows(group: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed windows -> (rows [N] of the packed pass that predict a next token in their window, targets [N])."""
    rows, start = [], 0
    for w in group:
        rows.append(torch.arange(start, start + len(w) - 1))
        start += len(w)
    return torch.cat(rows), torch.cat([w[1:] for w in group])


def score_pass(totals: dict[str, QualityTotals], finals: dict[str, tuple[torch.Tensor, HeadFn]], reference: str,
               rows: torch.Tensor, targets: torch.Tensor) -> None:
    """Add one pass to `totals`: `finals` maps a name to (final hidden [T, d], its head); `reference` names the
    one every KL and agreement is taken against (scored too where `totals` has it). Heads run on HEAD_CHUNK rows
    at a time."""
    ref_hidden, ref_head = finals[reference]
    for lo in range(0, len(rows), HEAD_CHUNK):
        chunk, target = rows[lo:lo + HEAD_CHUNK], targets[lo:lo + HEAD_CHUNK]
        ref_logp = F.log_softmax(ref_head(ref_hidden[chunk]).float(), dim=-1)  # [n, V]
        for name, (hidden, head) in finals.items():
            if name in totals:  # the reference itself may be scored, or only compared against
                totals[name].add(None if name == reference else head(hidden[chunk]), ref_logp, target)


def _head(model: DecoderModel) -> HeadFn:
    return lambda hidden: model.head(model.norm(hidden))


@torch.inference_mode()
def evaluate_model(model: DecoderModel, name: str, windows: list[torch.Tensor]) -> list[dict]:
    """One model alone (its own reference: KL 0, agreement 1)."""
    totals = {name: QualityTotals()}
    for group in tqdm(list(packed_windows(windows)), desc="eval", unit="pass", leave=False):
        ids = torch.cat(group)
        batch = ForwardBatch(list(range(len(group))), [0] * len(group), [len(w) for w in group])
        score_pass(totals, {name: (model.run_blocks(model.embed(ids), batch, None), _head(model))}, name,
                   *prediction_rows(group))
    return [totals[name].row(name, 1.0)]


@torch.inference_mode()
def evaluate_routes(executor, routes: list, costs: list[float], windows: list[torch.Tensor]) -> list[dict]:
    """Score routes of one family, running the large model once per pass and finishing every route from its
    states (so k shared blocks are computed once, not once per route); rows ordered by cost."""
    totals = {r.name: QualityTotals() for r in routes}
    cuts = {cut for r in routes for cut, _ in r.stitches}
    large = executor.family.large
    for group in tqdm(list(packed_windows(windows)), desc="eval", unit="pass", leave=False):
        ids = torch.cat(group)
        batch = ForwardBatch(list(range(len(group))), [0] * len(group), [len(w) for w in group])
        states = executor.large_pass(ids, batch, cuts)
        finals = {" reference": (states[large.config.num_layers], _head(large))}
        for route in routes:
            finals[route.name] = (executor.finish(route, states, ids, batch),
                                  _head(executor.family.model(route.head_model)))
        score_pass(totals, finals, " reference", *prediction_rows(group))
    rows = [totals[r.name].row(r.name, c) for r, c in zip(routes, costs)]
    return sorted(rows, key=lambda r: r["cost"])
