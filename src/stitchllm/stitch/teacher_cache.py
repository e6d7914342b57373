"""TeacherCache: the large model's pass over a token stream, computed once per window and reused from disk.

Why: training stitches needs, at every step, the large model's residual stream at each cut and its next-token
distribution. On the default family that pass (3.1 GFLOP/token, a 151,936-word head) runs at ~30-60 tokens/s
on 2 cores and is most of a build. Cached, a training step runs only the small model's top blocks and head, a
build that stops resumes where it stopped, and more training tokens cost one teacher pass each, once.

Per window of `window` tokens (each window is its own sequence, positions from 0), with T tokens, K = top_k:
  state.<k>      [T, d_L]  bf16 or fp16  residual stream after large block k-1, for every cut k
  topk_ids       [T, K]    int32         the teacher's K most likely next tokens, most likely first
  topk_logprobs  [T, K]    fp16          their log-probs
  tail_logprob   [T]       fp32          log of the teacher's mass outside its top K (see sparse_kl)
  ids            [T]       int32         the window's tokens, checked against the stream when read
`windows_per_shard` windows, rows packed, make one safetensors shard, written to `.partial` and renamed when
whole: a shard on disk is complete, and a crash loses at most the shard being made. manifest.json records the key
and the shards on disk; the shard files themselves decide what is done, so a deleted shard is made again.
At Qwen2.5-Coder-1.5B's dims (d_L = 1536, 4 cuts, K = 64, bf16 states): 12,680 bytes a token, 12.7 MB per 1k.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from stitchllm.errors import StitchError
from stitchllm.eval.quality import HEAD_CHUNK
from stitchllm.models.batch import ForwardBatch
from stitchllm.models.decoder import DecoderModel
from stitchllm.models.linear import computing_in, dtype_name, resolve_matmul_dtype
from stitchllm.paths import stitchllm_home
from stitchllm.stitch.sparse_kl import teacher_topk

STATE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
MANIFEST = "manifest.json"


def teacher_cache_root() -> Path:
    return stitchllm_home() / "teacher"


@dataclass(frozen=True, slots=True)
class TeacherCacheConfig:
    """How the large model's pass is kept on disk; part of a stitch recipe, since it changes what is trained on."""

    top_k: int = 64  # teacher log-probs kept per position; 0 keeps only the residual streams (least-squares start)
    state_dtype: str = "bfloat16"  # half of fp32 on disk. bf16 keeps fp32's range (residual streams carry outlier
    # channels far above the rest, fp16 ends at 65,504); fp16 has 3 more mantissa bits. Stitches train under bf16
    # autocast where the CPU has it, which rounds their input to bf16 anyway
    windows_per_shard: int = 8
    matmul_dtype: str = "float32"  # the large model's matmuls in the pass; auto: bf16 where the CPU has native bf16
    # dot products (3.4x faster on 2 AMX cores; KL(fp32 pass || bf16 pass) 3e-4 on Qwen2.5-Coder-1.5B, 0.6% of
    # argmaxes differ: docs/STITCHING.md). The key records the dtype it resolved to, so the two never mix
    cuts: tuple[int, ...] | None = None  # the cuts whose streams are kept (None: those of the stitches trained). A
    # superset lets builds with other cuts share one teacher pass: the pass costs the same whatever it keeps

    def cuts_for(self, wanted: Iterable[int]) -> set[int]:
        """The cuts a cache made for stitches at `wanted` keeps."""
        wanted = set(wanted)
        if self.cuts is None:
            return wanted
        if not wanted <= set(self.cuts):
            raise StitchError(f"teacher cache keeps cuts {list(self.cuts)}, not {sorted(wanted - set(self.cuts))}")
        return set(self.cuts)

    def __post_init__(self) -> None:
        if self.state_dtype not in STATE_DTYPES:
            raise StitchError(f"teacher cache state_dtype {self.state_dtype!r}: use {', '.join(STATE_DTYPES)}")
        if self.top_k < 0 or self.windows_per_shard < 1:
            raise StitchError(f"teacher cache needs top_k >= 0 and windows_per_shard >= 1, not {self}")


@dataclass(slots=True)
class CachedWindow:
    """Windows read back from the cache, rows packed in order: what a training step needs from the large model."""

    ids: torch.Tensor  # [T] int64
    states: dict[int, torch.Tensor]  # {cut k: [T, d_L]} fp32
    topk_ids: torch.Tensor  # [T, K] int64 (K = 0: no teacher distribution kept)
    topk_logprobs: torch.Tensor  # [T, K] fp32
    tail_logprob: torch.Tensor  # [T] fp32

    @staticmethod
    def cat(windows: list[CachedWindow]) -> CachedWindow:
        return CachedWindow(torch.cat([w.ids for w in windows]),
                            {k: torch.cat([w.states[k] for w in windows]) for k in windows[0].states},
                            torch.cat([w.topk_ids for w in windows]), torch.cat([w.topk_logprobs for w in windows]),
                            torch.cat([w.tail_logprob for w in windows]))


class TeacherCache:
    """The large model's residual streams at `cuts` and its top-K next-token log-probs over `ids`, by window."""

    def __init__(self, root: Path, model_fingerprint: str, ids: torch.Tensor, window: int, cuts: Iterable[int],
                 cfg: TeacherCacheConfig):
        n = len(ids) // window
        if n == 0:
            raise StitchError(f"teacher cache: {len(ids)} tokens make no window of {window}")
        self.window_ids = ids[: n * window].reshape(n, window)  # [N, T]; a remainder shorter than a window is left out
        self.window, self.cuts, self.cfg = window, tuple(sorted(set(cuts))), cfg
        self.matmul_dtype = resolve_matmul_dtype(cfg.matmul_dtype)
        text = hashlib.sha256(self.window_ids.to(torch.int64).numpy().tobytes()).hexdigest()[:16]
        self.key = {"model": model_fingerprint, "text": text, "windows": n, "window": window, "cuts": list(self.cuts),
                    "top_k": cfg.top_k, "state_dtype": cfg.state_dtype}
        cuts_name = ".".join(map(str, self.cuts))
        name = f"{text}-w{window}-c{cuts_name}-k{cfg.top_k}-{cfg.state_dtype}"
        if self.matmul_dtype != torch.float32:  # fp32 passes keep the names they were made under
            self.key["matmul_dtype"] = dtype_name(self.matmul_dtype)
            name += f"-mm.{dtype_name(self.matmul_dtype)}"
        self.directory = root / model_fingerprint / name

    @property
    def num_windows(self) -> int:
        return len(self.window_ids)

    def shard_path(self, shard: int) -> Path:
        return self.directory / f"shard-{shard:05d}.safetensors"

    def shard_windows(self, shard: int) -> range:
        per = self.cfg.windows_per_shard
        return range(shard * per, min((shard + 1) * per, self.num_windows))

    def missing(self, num_windows: int | None = None) -> list[int]:
        """Shards that cover windows [0, num_windows) (all: None) and are not on disk yet."""
        count = self.num_windows if num_windows is None else min(num_windows, self.num_windows)
        return [s for s in range(-(-count // self.cfg.windows_per_shard)) if not self.shard_path(s).is_file()]

    def fill(self, model: DecoderModel, num_windows: int | None = None) -> int:
        """Run `model` (the large one) over every window of the missing shards that cover windows
        [0, num_windows); returns how many shards it made."""
        todo = self.missing(num_windows)
        self.directory.mkdir(parents=True, exist_ok=True)
        tokens = sum(len(self.shard_windows(s)) for s in todo) * self.window
        with (tqdm(total=tokens, desc="teacher cache", unit="tok", unit_scale=True, disable=not todo) as bar,
              computing_in(model, self.matmul_dtype if todo else torch.float32)):
            for shard in todo:
                parts = []
                for i in self.shard_windows(shard):
                    parts.append(self._compute(model, self.window_ids[i]))
                    bar.update(self.window)
                self._write(shard, parts)
        self._write_manifest()
        return len(todo)

    @torch.inference_mode()
    def _compute(self, model: DecoderModel, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """One window's tensors as stored; ids [T]. The [rows, V] logits exist HEAD_CHUNK rows at a time."""
        states = model.residual_states(ids, ForwardBatch([0], [0], [len(ids)]), set(self.cuts))
        out = {"ids": ids.to(torch.int32)}
        for k in self.cuts:
            state = states[k].to(STATE_DTYPES[self.cfg.state_dtype])  # [T, d_L]
            if not torch.isfinite(state).all():
                raise StitchError(f"the residual stream after block {k - 1} overflows {self.cfg.state_dtype}: "
                                  "keep the teacher cache's states in bfloat16")
            out[f"state.{k}"] = state
        if self.cfg.top_k:
            final = states[model.config.num_layers]  # [T, d_L]
            chunks = [teacher_topk(model.head(model.norm(final[lo:lo + HEAD_CHUNK])).float(), self.cfg.top_k)
                      for lo in range(0, len(ids), HEAD_CHUNK)]
            topk_ids, logprobs, tail = (torch.cat(parts) for parts in zip(*chunks))
            out |= {"topk_ids": topk_ids.to(torch.int32), "topk_logprobs": logprobs.half(), "tail_logprob": tail}
        return out

    def _write(self, shard: int, parts: list[dict[str, torch.Tensor]]) -> None:
        tensors = {name: torch.cat([p[name] for p in parts]).contiguous() for name in parts[0]}
        path = self.shard_path(shard)
        partial = path.with_suffix(".partial")
        windows = self.shard_windows(shard)
        save_file(tensors, partial, metadata={"first_window": str(windows.start), "windows": str(len(windows))})
        os.replace(partial, path)  # atomic: the shard appears whole or not at all
        self._write_manifest()

    def _write_manifest(self) -> None:
        shards = range(-(-self.num_windows // self.cfg.windows_per_shard))
        done = {str(s): {"file": self.shard_path(s).name, "windows": [self.shard_windows(s).start,
                                                                      self.shard_windows(s).stop]}
                for s in shards if self.shard_path(s).is_file()}
        manifest = {"key": self.key, "shards": done, "complete": len(done) == len(shards)}
        partial = self.directory / (MANIFEST + ".partial")
        partial.write_text(json.dumps(manifest, indent=2))
        os.replace(partial, self.directory / MANIFEST)

    def read(self, i: int) -> CachedWindow:
        """Window i: ids [T], states {k: [T, d_L]} fp32, the teacher's top-K ids [T, K] and log-probs [T, K], and
        the log of its tail mass [T] (0 with K = 0: all the mass is tail)."""
        shard, row = divmod(i, self.cfg.windows_per_shard)
        path = self.shard_path(shard)
        if not path.is_file():
            raise StitchError(f"window {i} of the teacher cache is not computed yet ({path}): fill the cache first")
        lo, hi = row * self.window, (row + 1) * self.window
        with safe_open(path, framework="pt") as f:
            def rows(name: str) -> torch.Tensor:
                return f.get_slice(name)[lo:hi]

            ids = rows("ids").long()
            if not torch.equal(ids, self.window_ids[i]):
                raise StitchError(f"{path} does not hold this text (window {i}): delete it to have it made again")
            states = {k: rows(f"state.{k}").float() for k in self.cuts}
            if self.cfg.top_k:
                return CachedWindow(ids, states, rows("topk_ids").long(), rows("topk_logprobs").float(),
                                    rows("tail_logprob"))
        return CachedWindow(ids, states, torch.zeros(self.window, 0, dtype=torch.long), torch.zeros(self.window, 0),
                            torch.zeros(self.window))

    def read_windows(self, indices: Iterable[int] | None = None) -> Iterator[CachedWindow]:
        """The windows at `indices` (all, in order: None), one at a time."""
        for i in range(self.num_windows) if indices is None else indices:
            yield self.read(int(i))
