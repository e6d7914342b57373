"""Load models and tokenizers: HF directories, hub ids, GGUF files (via transformers' converter), tiny random configs."""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from stitchllm.errors import StitchError
from stitchllm.models.config import ModelConfig
from stitchllm.models.decoder import DecoderModel
from stitchllm.models.gguf_blocks import SOURCE_MARKER, GGUFWeights, gguf_parts, gguf_source
from stitchllm.models.hf_weights import check_config_matches, load_hf_state_dict
from stitchllm.models.linear import Linear
from stitchllm.paths import EMBEDDED_NAME, embedded_gguf_path, stitchllm_home

DEFAULT_MODEL = "default"
log = logging.getLogger(__name__)


def resolve_model_dir(source: str | Path | None = None) -> Path:
    """Turn what a user names (the embedded default, an HF directory, a .gguf file, a hub id) into an HF directory."""
    if source is None or str(source) == DEFAULT_MODEL:
        return gguf_to_hf_dir(embedded_gguf_path(), name=EMBEDDED_NAME)
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return gguf_to_hf_dir(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise StitchError(f"model directory {path} has no config.json")
        return path
    text = str(source)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.suffix
    if looks_like_hub_id:
        return _download_from_hub(text)
    raise StitchError(f"model path not found: {source}")


def _download_from_hub(repo_id: str) -> Path:
    """Fetch config, tokenizer and safetensors of a hub model (needs a network; this project's machines have none)."""
    from huggingface_hub import snapshot_download

    try:
        patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # offline, unknown repo, gated repo: one line naming the cause
        raise StitchError(f"cannot fetch {repo_id!r} from the Hugging Face hub: {type(exc).__name__}") from exc


def gguf_to_hf_dir(gguf: Path, name: str | None = None) -> Path:
    """Convert a GGUF file once, with transformers' own converter, into a cached HF directory (fp32 safetensors)."""
    # Keyed by content (size + first MiB), not path or mtime: every venv installs its own copy of the embedded
    # GGUF, and a path key made two checkouts re-convert into the shared cache in turn.
    with gguf.open("rb") as f:
        key = hashlib.sha256(str(gguf.stat().st_size).encode() + f.read(1 << 20)).hexdigest()[:10]
    out = stitchllm_home() / "models" / (name or f"{gguf.stem}-{key}")
    marker = out / SOURCE_MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("key") == key:
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to an HF directory at %s (once)", gguf.name, out)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:
        raise StitchError(f"cannot convert GGUF {gguf}: {exc}".splitlines()[0]) from exc
    out.mkdir(parents=True, exist_ok=True)
    # The weights are de-quantised fp32 now: drop the GGUF quantiser so transformers saves a plain checkpoint.
    hf_model.hf_quantizer = None
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    hf_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    marker.write_text(json.dumps({"gguf": str(gguf), "key": key}))
    return out


def load_config(model_dir: Path) -> ModelConfig:
    from transformers import AutoConfig

    try:
        hf = AutoConfig.from_pretrained(model_dir)
    except (ValueError, KeyError, OSError) as exc:
        raise StitchError(f"cannot read config of {model_dir}: {exc}".splitlines()[0]) from exc
    return ModelConfig.from_hf(hf)


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool}


class SafetensorsCheckpoint(Mapping):
    """An HF checkpoint's tensors by name, each read from its safetensors shard when asked for.

    Why plain reads and not `safetensors.safe_open`: that maps the whole file, and every page it has touched counts
    in the process's resident memory until the file is closed, so loading a 6.7 GB checkpoint peaked at twice
    its size (measured: 14.4 GB for Qwen2.5-Coder-1.5B). Reading each tensor into its own buffer keeps the peak
    at the model plus one tensor. The format is the documented one: an 8-byte little-endian header length, a JSON
    header of {name: {dtype, shape, data_offsets}}, then the data."""

    def __init__(self, model_dir: Path):
        index = model_dir / "model.safetensors.index.json"
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
            else ["model.safetensors"]
        self._where: dict[str, tuple[Path, dict, int]] = {}  # name -> (file, header entry, data start)
        for shard in shards:
            path = model_dir / shard
            if not path.is_file():
                raise StitchError(f"missing weights file {path}")
            with path.open("rb") as f:
                size = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(size))
            header.pop("__metadata__", None)
            self._where |= {name: (path, entry, 8 + size) for name, entry in header.items()}

    def shape(self, name: str) -> torch.Size:
        return torch.Size(self._where[name][1]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return _SAFETENSORS_DTYPES[self._where[name][1]["dtype"]]

    def read_into(self, name: str, out: torch.Tensor) -> torch.Tensor:
        """Read tensor `name` into `out` (contiguous, of its shape and dtype); returns `out`."""
        path, entry, data_start = self._where[name]
        begin, end = entry["data_offsets"]
        if tuple(out.shape) != tuple(entry["shape"]) or out.dtype != self.dtype(name) or not out.is_contiguous():
            raise StitchError(f"cannot read {name} {entry['shape']} {entry['dtype']} into {tuple(out.shape)} "
                              f"{out.dtype}")
        with path.open("rb") as f:
            f.seek(data_start + begin)
            read = f.readinto(memoryview(out.reshape(-1).view(torch.uint8).numpy()))
        if read != end - begin:
            raise StitchError(f"{path} is truncated: tensor {name} has {read} of {end - begin} bytes")
        return out

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.read_into(name, torch.empty(self.shape(name), dtype=self.dtype(name)))

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def load_model(
    source: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    max_positions: int | None = None,
    weights: str = "fp32",
) -> DecoderModel:
    """Load a model's weights into the block runtime; the architecture is read from its config's `model_type`.
    `weights` 'int8' / 'int4' stores every linear but the LM head quantised (models/quantized.py), 'gguf' every
    linear as the GGUF file the model came from stores it (models/gguf_blocks.py); each as it arrives: the fp32
    model is never whole in memory."""
    from stitchllm.models.quantized import quantized_kind, resolve_weight_format

    fmt = resolve_weight_format(weights)  # an unknown or unsupported format fails before anything is read
    kind = quantized_kind(fmt)
    model_dir = resolve_model_dir(source)
    gguf = None
    if fmt == "gguf":
        source_file = gguf_source(model_dir)
        if source_file is None:  # said louder when asked for by name than when `auto` chose it
            log.log(logging.WARNING if weights == "gguf" else logging.INFO,
                    "%s did not come from a GGUF file (or it is gone): --weights %s loads it in fp32", model_dir,
                    weights)
        else:
            gguf = GGUFWeights(source_file)
    config = load_config(model_dir)
    hf_tensors = SafetensorsCheckpoint(model_dir)
    check_config_matches(config, set(hf_tensors))
    with torch.device("meta"):
        model = DecoderModel(config, max_positions)
    model = model.to_empty(device="cpu")
    model.rotary.reset()  # its tables are not weights: recompute them after to_empty
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    loaded = None
    if dtype == torch.float32 and torch.device(device).type == "cpu":
        # Pack each linear as soon as its weight is in place: to_empty's pages are resident only once written, so
        # the model never holds more than its weights plus the one being packed (the 0.93 GB head of
        # Qwen2.5-Coder-1.5B, which load_hf_state_dict reads first, while little else is resident).
        linears = {f"{name}.weight": m for name, m in model.named_modules() if isinstance(m, Linear)}

        def loaded(name: str) -> None:
            if name == "embed_tokens.weight" and gguf is not None:  # read a row a token: bf16 (DecoderModel.prepack)
                model.embed_tokens.weight = nn.Parameter(model.embed_tokens.weight.bfloat16(), requires_grad=False)
            linear = linears.get(name)
            if linear is None:
                return
            if gguf is not None:
                linear.hold(_from_gguf(gguf, name, linear.weight.detach(), config.tie_word_embeddings))
            elif kind is None or linear is model.lm_head:
                linear.pack(torch.float32, release=True)
            else:
                linear.hold(kind(linear.weight.detach()))
            if fmt != "fp32":
                return_freed_memory()
    elif kind is not None or gguf is not None:
        raise StitchError(f"--weights {weights} needs fp32 weights on the CPU")
    load_hf_state_dict(model, hf_tensors, loaded)
    if gguf is not None:
        if config.tie_word_embeddings:  # the head shares the embedding's tensor, which did not arrive as a linear
            loaded("lm_head.weight")
        model.gguf_source = gguf.path
    else:
        model = model.to(device=device, dtype=dtype)  # (gguf: the CPU and fp32 already, but for the bf16 table)
    return model.eval().requires_grad_(False).prepack(weights=fmt)


def return_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim; a no-op elsewhere).

    Why: quantising frees each fp32 weight and its temporaries, and glibc keeps freed blocks below its mmap
    threshold (which grows to 32 MB as large blocks are freed) in the heap. Loading the default family with
    `--weights gguf` left 4.4 GiB resident for 2.2 GiB of weights; trimming as each linear is stored keeps the
    peak near what is held."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


def _from_gguf(gguf: GGUFWeights, name: str, dense: torch.Tensor, tied: bool):
    """The quantised form of runtime weight `name` as the GGUF file stores it: int4 level for level where all its
    parts are 4-bit types, else int8 per row of the de-quantised weight `dense` [N, K]; held for the integer
    dot-product kernel where it builds (models/int_dot.py), else for PyTorch's. Refuses a GGUF file whose levels do
    not give back `dense` (the checkpoint was not converted from it)."""
    from stitchllm.models.int_dot import IntDotWeight, int_dot_available
    from stitchllm.models.quantized import Int4Weight, Int8Weight

    levels = gguf.stacked_levels(gguf_parts(name, tied))
    if levels is None:
        rows = Int8Weight(dense)
        return IntDotWeight.from_int8(rows.q, rows.scales) if int_dot_available() else rows
    q, scale, zero = levels
    if q.shape != dense.shape:
        raise StitchError(f"{gguf.path} does not hold the weights of this checkpoint ({name} is {tuple(dense.shape)}, "
                          f"the file's {tuple(q.shape)})")
    kept = (q.float() - 8).view(*scale.shape, -1) * scale[..., None] + zero[..., None]  # [N, K/G, G] fp32
    if (kept.view(dense.shape) - dense).norm() > 1e-5 * dense.norm():  # fp32 rounding apart, they are equal
        raise StitchError(f"{gguf.path} does not hold the weights of this checkpoint ({name} differs)")
    if int_dot_available():
        return IntDotWeight.from_int4_levels(q, scale, zero)
    return Int4Weight.from_levels(q, scale, zero)


def load_tokenizer(source: str | Path | None = None, vocab_size: int | None = None):
    """The model's own tokenizer; refuses one with more tokens than the model's embedding has rows."""
    from transformers import AutoTokenizer

    model_dir = resolve_model_dir(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise StitchError(f"cannot load the tokenizer of {model_dir}: {exc}".splitlines()[0]) from exc
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise StitchError(f"tokenizer mismatch: tokenizer has {len(tokenizer)} tokens, model vocab is {vocab_size}")
    return tokenizer


def random_model(config: ModelConfig, seed: int = 0, max_positions: int | None = None) -> DecoderModel:
    """A randomly initialised model for tests (small-std weights, unit norms)."""
    gen = torch.Generator().manual_seed(seed)
    model = DecoderModel(config, max_positions)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval().requires_grad_(False).prepack()
