"""Log-probabilities of chosen tokens and their top-N alternatives, as the runner hands them back (plain lists).

Which distribution: the route's own, raw. Each value is log_softmax, in fp32, of the logits of the route that
served the request (its final norm and head), before temperature, top-k and top-p touch them: vLLM's default
("raw logprobs"). So a request's logprobs do not depend on how it samples, and greedy tokens are always the most
likely ones. They are computed only for requests that ask, from their own logits rows; a prompt is scored a chunk
of positions at a time, so no [T, V] tensor the size of a long prompt (V is ~150k for Qwen) is ever built.
"""

from __future__ import annotations

import torch

from stitchllm.engine.request import TokenLogprob
from stitchllm.models.decoder import DecoderModel

PROMPT_CHUNK = 64  # prompt positions scored per norm+head pass: [64, 151936] fp32 logits are ~39 MB


def token_logprobs(logits: torch.Tensor, token_ids: list[int], top_n: int) -> list[TokenLogprob]:
    """logits [T, V] (position t predicts token_ids[t]) -> T entries with the top `top_n` of each row."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [T, V] fp32
    chosen = logp.gather(1, torch.tensor(token_ids, device=logp.device)[:, None])[:, 0].tolist()  # [T]
    if top_n > 0:  # topk's values are sorted descending, and are the same floats as `chosen` where ids meet
        values, ids = logp.topk(top_n, dim=-1)  # [T, N]
        tops = [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        tops = [[] for _ in token_ids]
    return [TokenLogprob(t, lp, top) for t, lp, top in zip(token_ids, chosen, tops)]


def prompt_logprobs(model: DecoderModel, hidden: torch.Tensor, prompt_ids: list[int], top_n: int) -> tuple[
        list[TokenLogprob | None], int]:
    """hidden [P, D]: the route's final hidden states (before the norm) of the whole prompt, on `model`, the one
    whose norm and head end the route. Returns P entries, the first None (nothing predicts the first token), and
    the number of norm+head passes run (each reads the head's weights)."""
    out: list[TokenLogprob | None] = [None]
    passes = 0
    for lo in range(0, len(prompt_ids) - 1, PROMPT_CHUNK):
        hi = min(lo + PROMPT_CHUNK, len(prompt_ids) - 1)
        logits = model.head(model.norm(hidden[lo:hi]))  # [hi-lo, V]: position t predicts prompt token t+1
        out += token_logprobs(logits, prompt_ids[lo + 1 : hi + 1], top_n)
        passes += 1
    return out, passes
