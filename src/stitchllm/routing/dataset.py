"""Router training data: per request, pooled prompt features and every route's measured loss on its continuation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from stitchllm.models.batch import ForwardBatch
from stitchllm.routing.catalog import RouteCatalog
from stitchllm.routing.features import pool_features


@dataclass
class RouterDataset:
    """N requests x R routes (routes ordered by cost, large last)."""

    route_names: list[str]
    costs: list[float]
    feature_block: int
    features: torch.Tensor  # [N, 2 d_L]: the prompt's pooled states after the large model's feature block
    kl: torch.Tensor  # [N, R] mean KL(large || route) over the continuation, nats
    agree: torch.Tensor  # [N, R] top-1 agreement with the large model over the continuation
    nll: torch.Tensor  # [N, R] mean negative log-likelihood of the true continuation tokens, nats

    @property
    def loss(self) -> torch.Tensor:
        """The label the router learns and thresholds compare against: log(1 + KL)."""
        return torch.log1p(self.kl)


def shared_blocks(catalog: RouteCatalog) -> int:
    """Blocks of the large model that every stitched route runs: up to the earliest cut."""
    cuts = [s.cut for s in catalog.stitches.values()]
    return min(cuts) if cuts else catalog.family.large.config.num_layers


def sample_requests(ids: torch.Tensor, n: int, prompt_len: int, cont_len: int) -> list[torch.Tensor]:
    """n disjoint (prompt + continuation) spans of real text, evenly spread over the id stream."""
    span = prompt_len + cont_len
    starts = torch.linspace(0, len(ids) - span, n).long().tolist()
    return [ids[s : s + span] for s in starts]


@torch.inference_mode()
def build_dataset(catalog: RouteCatalog, requests: list[torch.Tensor], prompt_len: int, feature_block: int,
                  group: int = 16) -> RouterDataset:
    """Run every route over each request (teacher-forced on the real continuation) and record its loss; the
    features are the prompt's states after the large model's first `feature_block` blocks (0: the embeddings)."""
    executor = catalog.executor
    routes = catalog.routes
    feats, kls, agrees, nlls = [], [], [], []
    for i in tqdm(range(0, len(requests), group), desc="router labels", unit="batch"):
        chunk = requests[i : i + group]
        lengths = [len(r) for r in chunk]
        batch = ForwardBatch(list(range(len(chunk))), [0] * len(chunk), lengths)
        ids = torch.cat(chunk)
        states = executor.large_pass(ids, batch, {feature_block} | {s.cut for s in catalog.stitches.values()})
        prompt_states = torch.cat([h[:prompt_len] for h in states[feature_block].split(lengths)])
        feats.append(pool_features(prompt_states, [prompt_len] * len(chunk)))
        # positions whose next token is a continuation token: prompt_len-1 .. span-2 of each request
        offsets = torch.tensor([0] + lengths[:-1]).cumsum(0).tolist()
        pos = torch.cat([torch.arange(prompt_len - 1, n - 1) + off for n, off in zip(lengths, offsets)])
        targets = ids[pos + 1]
        ref_logp = None
        route_kl, route_agree, route_nll = [], [], []
        for route in reversed(routes):  # large first: it is the reference
            logp = F.log_softmax(executor.logits(route, executor.finish(route, states, ids, batch)[pos]), dim=-1)
            if ref_logp is None:
                ref_logp = logp
            kl = F.kl_div(logp, ref_logp, log_target=True, reduction="none").sum(-1)  # [P]
            agree = (logp.argmax(-1) == ref_logp.argmax(-1)).float()
            route_kl.append(kl.view(len(chunk), -1).mean(1))
            route_agree.append(agree.view(len(chunk), -1).mean(1))
            route_nll.append(-logp.gather(1, targets[:, None]).view(len(chunk), -1).mean(1))
        nlls.append(torch.stack(route_nll[::-1], dim=1))
        kls.append(torch.stack(route_kl[::-1], dim=1))
        agrees.append(torch.stack(route_agree[::-1], dim=1))
    return RouterDataset([r.name for r in routes], [catalog.relative_cost(r) for r in routes], feature_block,
                         torch.cat(feats), torch.cat(kls).clamp_min(0.0), torch.cat(agrees), torch.cat(nlls))
