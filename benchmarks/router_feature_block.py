"""Which of the large model's blocks should the router read? Held-out APGR of routers fitted on features after
k blocks (k = 0: the token embeddings), labels shared by all k.

    .venv/bin/python benchmarks/router_feature_block.py [--blocks 0,1,2,3,5,10]     # ~8 min on 2 cores

Every prompt the router routes runs the large model's first k blocks before its route is known; a request sent
to `small` wastes them (k/n_L of a large-model prefill). So k should be the smallest that routes as well as any.
Same recipe, calibration text and held-out text as `stitchllm router train` / `router eval`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch

from stitchllm.data.corpus import python_docs_text
from stitchllm.eval.router_eval import evaluate_policies
from stitchllm.models.batch import ForwardBatch
from stitchllm.routing.catalog import load_catalog
from stitchllm.routing.dataset import build_dataset, sample_requests
from stitchllm.routing.features import pool_features
from stitchllm.routing.policies import RoutingBatch
from stitchllm.routing.router_train import RouterTrainConfig, fit_router


@torch.inference_mode()
def prompt_features(catalog, requests: list[torch.Tensor], prompt_len: int,
                    blocks: list[int]) -> dict[int, torch.Tensor]:
    """Per k in `blocks`: [N, 2d] pooled prompt states after the large model's first k blocks."""
    prompts = [r[:prompt_len] for r in requests]
    batch = ForwardBatch(list(range(len(prompts))), [0] * len(prompts), [prompt_len] * len(prompts))
    states = catalog.executor.large_pass(torch.cat(prompts), batch, set(blocks))
    return {k: pool_features(states[k], batch.lengths) for k in blocks}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", default="0,1,2,3,5,10")
    args = ap.parse_args()
    blocks = [int(k) for k in args.blocks.split(",")]
    catalog = load_catalog("default", None, None, require_stitches=True)
    cfg = RouterTrainConfig()
    splits = {}
    for split, n in (("train", cfg.requests), ("heldout", 256)):
        ids = torch.tensor(catalog.family.tokenizer(python_docs_text(split), add_special_tokens=False)["input_ids"])
        requests = sample_requests(ids, n, cfg.prompt_len, cfg.cont_len)
        splits[split] = (build_dataset(catalog, requests, cfg.prompt_len, feature_block=0),
                         prompt_features(catalog, requests, cfg.prompt_len, blocks))
    (train, train_feats), (heldout, heldout_feats) = splits["train"], splits["heldout"]
    report = {}
    for k in blocks:
        router, fit = fit_router(replace(train, feature_block=k, features=train_feats[k]), cfg)
        batch = RoutingBatch(heldout.route_names, heldout.costs, predicted_loss=router(heldout_feats[k]),
                             true_loss=heldout.loss)
        policies = evaluate_policies(batch, heldout.agree, ["router", "random", "oracle"])["policies"]
        report[k] = {name: {"apgr": round(p["apgr"], 4), "cost_at_95": round(p["cost_at_95"], 4)}
                     for name, p in policies.items()} | {"val_mse": round(fit["val_mse"], 5)}
        print(f"k={k:>2}  router APGR {report[k]['router']['apgr']:.4f}  cost at 95% "
              f"{report[k]['router']['cost_at_95']:.4f}  validation MSE {fit['val_mse']:.5f}", flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
