"""TextTracker: a generation's text as it may be sent, token by token (whole characters, stop strings cut)."""

from __future__ import annotations

from tokenizers.decoders import DecodeStream


class TextTracker:
    """Incremental detokenisation with stop strings: returns only text that is final (no half characters,
    nothing that could still turn into a stop string).

    Each token is decoded once (the tokenizers library's DecodeStream, which holds back partial UTF-8): decoding
    the whole output again for every token cost O(n^2) on the event loop that every stream shares. A tokenizer
    without a Rust backend falls back to that whole-output decode."""

    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer, self.stops = tokenizer, [s for s in stops if s]
        self.ids: list[int] = []
        self.emitted = 0
        self.text = ""  # the output decoded so far, cut at a stop string once one appears
        self.stopped = False
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._stream = DecodeStream(skip_special_tokens=True) if self._backend is not None else None

    def _decode(self, token_ids: list[int], finished: bool) -> str:
        """The output decoded so far; while unfinished, without a character still split across tokens."""
        if self._stream is not None:  # DecodeStream holds partial characters back itself
            return self.text + "".join(piece for t in token_ids if (piece := self._stream.step(self._backend, t)))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return text if finished else text.rstrip("\ufffd")

    def add(self, token_ids: list[int], finished: bool) -> str:
        self.ids.extend(token_ids)
        text = self._decode(token_ids, finished)
        for stop in self.stops:
            at = text.find(stop, max(0, len(self.text) - len(stop) + 1))  # earlier text was searched already
            if at >= 0:
                text, finished, self.stopped = text[:at], True, True
        self.text = text
        if not finished:
            hold = max((len(s) - 1 for s in self.stops), default=0)
            text = text[: max(self.emitted, len(text) - hold)]
        delta = text[self.emitted:]
        self.emitted += len(delta)
        return delta
