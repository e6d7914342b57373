"""Router features: the prompt's hidden states after the large model's first few blocks, pooled."""

from __future__ import annotations

import torch


def pool_features(hidden: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """hidden [T, d] of packed prompts -> [B, 2d]: each prompt's mean state and its last token's state."""
    rows = []
    for h in hidden.split(lengths):
        rows.append(torch.cat([h.mean(0), h[-1]]))
    return torch.stack(rows)
