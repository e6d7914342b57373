"""Logprobs in OpenAI's two response shapes: completions' parallel lists and chat's content entries.

A token is shown as its own text, decoded alone (as vLLM does): a token that holds part of a multi-byte character
reads as U+FFFD, and its `bytes` (chat) are the token's exact bytes, so a client can always rebuild the text.
"""

from __future__ import annotations

from stitchllm.engine.request import TokenLogprob


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, inverted: the printable character that stands for each byte -> the byte."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    alphabet, n = {}, 0
    for b in range(256):
        if b in printable:
            alphabet[chr(b)] = b
        else:
            alphabet[chr(256 + n)] = b
            n += 1
    return alphabet


class TokenTexts:
    """Token id -> (text, UTF-8 bytes) as logprobs show it; each id decoded once (prompts repeat their tokens)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        # byte-level BPE (GPT-2, SmolLM2, Qwen): a token's exact bytes, even half a character, are in its name
        self._alphabet = _byte_level_alphabet() if type(decoder).__name__ == "ByteLevel" else None
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is None:
            text = self.tokenizer.decode([token_id])
            name = self.tokenizer.convert_ids_to_tokens(token_id)
            if self._alphabet is not None and name and all(c in self._alphabet for c in name):
                data = [self._alphabet[c] for c in name]
            else:
                data = list(text.encode("utf-8"))
            hit = self._cache[token_id] = (text, data)
        return hit

    def text(self, token_id: int) -> str:
        return self(token_id)[0]


class CompletionLogprobs:
    """Completions' `logprobs` object: tokens, token_logprobs, top_logprobs ({text: logprob}, descending) and
    text_offset, the character offset of each token in the choice's text. Offsets run on from one call to the next,
    so a stream's chunks continue where the last one ended (an echoed prompt starts at 0)."""

    def __init__(self, texts: TokenTexts):
        self.texts, self.offset = texts, 0

    def __call__(self, token_ids: list[int], entries: list[TokenLogprob | None]) -> dict:
        """One entry per token; None (a prompt's first token) gives null logprob and null top_logprobs."""
        tokens, logprobs, tops, offsets = [], [], [], []
        for token_id, e in zip(token_ids, entries, strict=True):
            text = self.texts.text(token_id)
            tokens.append(text)
            offsets.append(self.offset)
            self.offset += len(text)
            logprobs.append(None if e is None else e.logprob)
            top = None
            if e is not None:
                top = {}
                for i, lp in e.top:  # two ids with one text: the likelier keeps the key
                    top.setdefault(self.texts.text(i), lp)
            tops.append(top)
        return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(texts: TokenTexts, entries: list[TokenLogprob]) -> dict:
    """Chat's `logprobs` object: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}."""

    def shown(token_id: int, logprob: float) -> dict:
        text, data = texts(token_id)
        return {"token": text, "logprob": logprob, "bytes": data}

    return {"content": [shown(e.token_id, e.logprob) | {"top_logprobs": [shown(i, lp) for i, lp in e.top]}
                        for e in entries]}
