"""Static-batch generation with a KV cache: the baseline that the continuous-batching engine later replaces."""

from __future__ import annotations

from collections.abc import Callable

import torch

from stitchllm.models.batch import ForwardBatch
from stitchllm.models.decoder import DecoderModel
from stitchllm.sampling import SamplingParams, sample

# Runs the new tokens of a batch and returns the logits of each sequence's last new token: [T] ids -> [B, V].
LastLogitsFn = Callable[[torch.Tensor, ForwardBatch], torch.Tensor]


def model_last_logits(model: DecoderModel, num_slots: int, max_len: int) -> LastLogitsFn:
    """A LastLogitsFn over a whole model with a fresh KV cache; the head runs only where a token is sampled."""
    cache = model.new_cache(num_slots, max_len)

    def run(ids: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        hidden = model.run_blocks(model.embed(ids), batch, cache)  # [T, D]
        return model.head(model.norm(hidden[batch.last_token_indices()]))  # [B, V]

    return run


@torch.inference_mode()
def generate(
    last_logits: LastLogitsFn,
    prompts: list[list[int]],
    params: SamplingParams,
    eos_token_ids: set[int],
    on_token: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """Generate for several prompts of different lengths in one batch; sequence i uses KV-cache slot i.

    All prompts are prefilled together (packed, no padding), then every unfinished sequence decodes one token per
    step. Returns the new token ids of each prompt (the stop token included when one ended it).
    """
    gens = [params.make_generator() for _ in prompts]
    stops = set(params.stop_token_ids) | (set() if params.ignore_eos else eos_token_ids)
    outputs: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    ids = torch.tensor([t for p in prompts for t in p])
    batch = ForwardBatch(active, [0] * len(prompts), [len(p) for p in prompts])
    while True:
        next_ids = sample(last_logits(ids, batch), [params] * len(active), [gens[i] for i in active])
        for i, token in zip(active, next_ids):
            outputs[i].append(token)
            if on_token is not None:
                on_token(i, token)
        active = [i for i in active if outputs[i][-1] not in stops and len(outputs[i]) < params.max_tokens]
        if not active:
            break
        ids = torch.tensor([outputs[i][-1] for i in active])
        batch = ForwardBatch(active, [len(prompts[i]) + len(outputs[i]) - 1 for i in active], [1] * len(active))
    return outputs
