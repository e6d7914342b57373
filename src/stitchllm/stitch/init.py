"""Closed-form stitch initialisation: ridge-regularised least squares on paired activations, in float64."""

from __future__ import annotations

import torch

from stitchllm.eval.perplexity import packed_windows
from stitchllm.family.family import Family
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.decoder import DecoderModel
from stitchllm.stitch.teacher_cache import TeacherCache


@torch.inference_mode()
def paired_activations(
    family: Family, windows: list[torch.Tensor], pairs: list[tuple[int, int]]
) -> dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]:
    """For each (cut k, entry j): X = large residual after block k-1 [N, d_L], Y = small residual before block j
    [N, d_S], on the same tokens. Each model runs once per pass; the states are read off along the way."""
    want_large = {k for k, _ in pairs}
    want_small = {j for _, j in pairs}
    xs: dict[int, list[torch.Tensor]] = {k: [] for k in want_large}
    ys: dict[int, list[torch.Tensor]] = {j: [] for j in want_small}
    for group in packed_windows(windows):
        ids = torch.cat(group)
        batch = ForwardBatch(list(range(len(group))), [0] * len(group), [len(w) for w in group])
        bottom_states(family.large, ids, batch, want_large, xs)
        bottom_states(family.small, ids, batch, want_small, ys)
    return {(k, j): (torch.cat(xs[k]), torch.cat(ys[j])) for k, j in pairs}


@torch.inference_mode()
def paired_from_cache(
    family: Family, cache: TeacherCache, pairs: list[tuple[int, int]]
) -> dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]:
    """`paired_activations` on the cache's windows, X read from the cache (fp32, from its bf16/fp16 copy): the large
    model does not run. Y, the small model's own stream before block j, is still computed: its bottom blocks cost a
    fraction of the large pass, and caching it would tie the cache to one sibling."""
    xs: dict[int, list[torch.Tensor]] = {k: [] for k, _ in pairs}
    ys: dict[int, list[torch.Tensor]] = {j: [] for _, j in pairs}
    for window in cache.read_windows():
        for k in xs:
            xs[k].append(window.states[k])
        bottom_states(family.small, window.ids, ForwardBatch([0], [0], [len(window.ids)]), set(ys), ys)
    return {(k, j): (torch.cat(xs[k]), torch.cat(ys[j])) for k, j in pairs}


def bottom_states(model: DecoderModel, ids: torch.Tensor, batch: ForwardBatch, wanted: set[int],
                  out: dict[int, list[torch.Tensor]]) -> None:
    """Append to out[k] the residual stream [T, d] after block k-1 for each k in `wanted` (ids [T]), running only
    the blocks below the highest one."""
    hidden = model.embed(ids)
    for i in range(max(wanted)):
        hidden = model.blocks[i](hidden, batch)
        if i + 1 in wanted:
            out[i + 1].append(hidden.clone())


def ridge_affine(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve min ||x W^T + b - y||^2 + ridge * tr(x^T x)/d * ||W||^2 in float64; x [N, d_in], y [N, d_out].

    The penalty is scaled by the mean feature energy so one `ridge` suits residual streams of any magnitude;
    the bias is not penalised (inputs are centred first). Returns weight [d_out, d_in], bias [d_out].
    """
    x, y = x.double(), y.double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc  # [d_in, d_in]
    lam = ridge * gram.diagonal().mean()
    weight_t = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ yc)  # [d_in, d_out]
    bias = y_mean - x_mean @ weight_t
    return weight_t.T.float().contiguous(), bias.float()
