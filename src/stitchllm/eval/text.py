"""Evaluation text: read a UTF-8 file and cut its tokens into scoring windows."""

from __future__ import annotations

from pathlib import Path

import torch

from stitchllm.errors import StitchError


def read_text(path: str | Path) -> str:
    """The file's text; a missing, empty or non-UTF-8 file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise StitchError(f"text file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StitchError(f"{path} is not UTF-8 text (invalid byte at offset {exc.start})") from exc
    if not text.strip():
        raise StitchError(f"{path} is empty")
    return text


def token_windows(text: str, tokenizer, window: int = 512, max_tokens: int | None = None) -> list[torch.Tensor]:
    """Tokenise the whole text once (no BOS or other special tokens) and cut it into windows of <= `window` ids.

    Each window is scored on its own; its first token has no context, so a window of n ids scores n-1 predictions.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    windows = [torch.tensor(ids[i : i + window]) for i in range(0, len(ids), window)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise StitchError("text is too short to score (needs at least 2 tokens)")
    return windows


def interleave_windows(first: torch.Tensor, second: torch.Tensor, window: int) -> torch.Tensor:
    """Windows of `window` ids from `first` [n1] and `second` [n2] in turn, then the rest of the longer stream:
    [m] ids. A model trained on the result sees both kinds of text from its first steps."""
    a = first[: len(first) // window * window].view(-1, window)  # [n_a, window]
    b = second[: len(second) // window * window].view(-1, window)  # [n_b, window]
    both = min(len(a), len(b))
    return torch.cat([torch.stack([a[:both], b[:both]], 1).reshape(-1), a[both:].reshape(-1), b[both:].reshape(-1)])
