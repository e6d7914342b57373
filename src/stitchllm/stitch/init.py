"""Closed-form stitch initialisation: ridge-regularised least squares on paired activations, in float64, from
statistics summed pass by pass (the activations themselves are never all kept)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from stitchllm.eval.perplexity import packed_windows
from stitchllm.family.family import Family
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.decoder import DecoderModel
from stitchllm.stitch.teacher_cache import TeacherCache


Pairs = list[tuple[int, int]]  # (cut k, entry j)
# One pass's states: {cut k: large residual after block k-1 [T, d_L]}, {entry j: small residual before block j [T, d_S]}
PairBatch = tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]


def _live_batches(family: Family, windows: list[torch.Tensor], pairs: Pairs) -> Iterator[PairBatch]:
    """Each model run once per packed pass; the states read off along the way."""
    for group in packed_windows(windows):
        ids = torch.cat(group)
        batch = ForwardBatch(list(range(len(group))), [0] * len(group), [len(w) for w in group])
        yield (bottom_states(family.large, ids, batch, {k for k, _ in pairs}),
               bottom_states(family.small, ids, batch, {j for _, j in pairs}))


def _cached_batches(family: Family, cache: TeacherCache, pairs: Pairs,
                    num_windows: int | None = None) -> Iterator[PairBatch]:
    """X read from the cache (fp32, from its bf16/fp16 copy): the large model does not run. Y, the small model's
    own stream before block j, is still computed: its bottom blocks cost a fraction of the large pass, and caching
    it would tie the cache to one sibling."""
    for window in cache.read_windows(None if num_windows is None else range(num_windows)):
        batch = ForwardBatch([0], [0], [len(window.ids)])
        yield ({k: window.states[k] for k, _ in pairs},
               bottom_states(family.small, window.ids, batch, {j for _, j in pairs}))


def _concat(batches: Iterator[PairBatch], pairs: Pairs) -> dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]:
    xs: dict[int, list[torch.Tensor]] = {k: [] for k, _ in pairs}
    ys: dict[int, list[torch.Tensor]] = {j: [] for _, j in pairs}
    for x, y in batches:
        for k in xs:
            xs[k].append(x[k])
        for j in ys:
            ys[j].append(y[j])
    return {(k, j): (torch.cat(xs[k]), torch.cat(ys[j])) for k, j in pairs}


def _fits(batches: Iterator[PairBatch], pairs: Pairs, d_in: int, d_out: int) -> dict[tuple[int, int], "AffineFit"]:
    fits = {pair: AffineFit.empty(d_in, d_out) for pair in pairs}
    for x, y in batches:
        for (k, j), fit in fits.items():
            fit.add(x[k], y[j])
    return fits


@torch.inference_mode()
def paired_activations(family: Family, windows: list[torch.Tensor], pairs: Pairs):
    """For each (cut k, entry j): X = large residual after block k-1 [N, d_L], Y = small residual before block j
    [N, d_S], on the same tokens (all of them in memory: for inspection and tests; fits use `pair_fits`)."""
    return _concat(_live_batches(family, windows, pairs), pairs)


@torch.inference_mode()
def paired_from_cache(family: Family, cache: TeacherCache, pairs: Pairs):
    """`paired_activations` on the cache's windows."""
    return _concat(_cached_batches(family, cache, pairs), pairs)


@torch.inference_mode()
def pair_fits(family: Family, pairs: Pairs, windows: list[torch.Tensor] | None = None,
              cache: TeacherCache | None = None, cache_windows: int | None = None
              ) -> dict[tuple[int, int], "AffineFit"]:
    """The least-squares statistics of every pair over `windows` (or the cache's first `cache_windows`, all:
    None), accumulated pass by pass: memory stays O(d^2) per pair however many calibration tokens there are."""
    if cache is None:
        batches = _live_batches(family, windows, pairs)
    else:
        batches = _cached_batches(family, cache, pairs, cache_windows)
    return _fits(batches, pairs, family.large.config.hidden_size, family.small.config.hidden_size)


def bottom_states(model: DecoderModel, ids: torch.Tensor, batch: ForwardBatch, wanted: set[int]) -> dict[int, torch.Tensor]:
    """The residual stream [T, d] after block k-1 for each k in `wanted` (ids [T]), running only the blocks below
    the highest one."""
    out, hidden = {}, model.embed(ids)
    for i in range(max(wanted)):
        hidden = model.blocks[i](hidden, batch)
        if i + 1 in wanted:
            out[i + 1] = hidden.clone()
    return out


@dataclass(slots=True)
class AffineFit:
    """Sufficient statistics of the least-squares fit y ~ x W^T + b, summed in float64 chunk by chunk."""

    n: int
    sum_x: torch.Tensor  # [d_in]
    sum_y: torch.Tensor  # [d_out]
    xx: torch.Tensor  # [d_in, d_in]
    xy: torch.Tensor  # [d_in, d_out]

    @classmethod
    def empty(cls, d_in: int, d_out: int) -> "AffineFit":
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
        return cls(0, z(d_in), z(d_out), z(d_in, d_in), z(d_in, d_out))

    def add(self, x: torch.Tensor, y: torch.Tensor) -> "AffineFit":
        """x [N, d_in], y [N, d_out]: N more rows."""
        x, y = x.double(), y.double()
        self.n += len(x)
        self.sum_x += x.sum(0)
        self.sum_y += y.sum(0)
        self.xx += x.T @ x
        self.xy += x.T @ y
        return self

    def solve(self, ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
        """Minimise ||x W^T + b - y||^2 + ridge * tr(xc^T xc)/d * ||W||^2 (xc: x centred), in float64.

        The penalty is scaled by the mean feature energy so one `ridge` suits residual streams of any magnitude;
        the bias is not penalised (inputs are centred first). Returns weight [d_out, d_in], bias [d_out]."""
        x_mean, y_mean = self.sum_x / self.n, self.sum_y / self.n
        gram = self.xx - self.n * torch.outer(x_mean, x_mean)  # centred x^T x [d_in, d_in]
        cross = self.xy - self.n * torch.outer(x_mean, y_mean)  # centred x^T y [d_in, d_out]
        lam = ridge * gram.diagonal().mean()
        weight_t = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), cross)  # [d_in, d_out]
        bias = y_mean - x_mean @ weight_t
        return weight_t.T.float().contiguous(), bias.float()


def ridge_affine(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """The ridge least-squares affine map from x [N, d_in] to y [N, d_out] (AffineFit.solve): weight, bias."""
    return AffineFit.empty(x.shape[1], y.shape[1]).add(x, y).solve(ridge)
