"""Save and load stitches: safetensors plus a JSON manifest that ties them to the family they were trained for."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from stitchllm.errors import StitchError
from stitchllm.family.family import Family
from stitchllm.stitch.adapters import BlockAdapters
from stitchllm.stitch.layer import StitchLayer

MANIFEST = "manifest.json"


def save_stitches(stitches: dict[str, StitchLayer], out: Path, filename: str,
                  dtype: torch.dtype = torch.float32) -> None:
    """Every stitch's tensors, kept as `dtype` (loading casts them back to fp32)."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, s in stitches.items():
        tensors |= {f"{key}.{name}": t.to(dtype).contiguous() for name, t in s.tensors().items()}
    save_file(tensors, out / filename)


def stitches_fingerprint(stitch_dir: Path) -> str:
    """Content hash of the trained stitches: routers and bench labels are tied to it."""
    return hashlib.sha256((stitch_dir / "trained.safetensors").read_bytes()).hexdigest()[:16]


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.is_file():
        raise StitchError(f"no stitches at {directory} (missing {MANIFEST}); run `stitchllm stitch build`")
    return json.loads(path.read_text())


def load_stitches(family: Family, directory: Path, which: str = "trained") -> dict[str, StitchLayer]:
    """The stitches in `directory` ("trained" or "init"); refuses them if they were made for another family."""
    manifest = read_manifest(directory)
    if manifest["family"] != family.fingerprint():
        raise StitchError(f"stitches at {directory} were trained for another family "
                          f"({manifest['family']}), not this one ({family.fingerprint()})")
    path = directory / manifest["files"][which]
    if not path.is_file():  # shipped stitches keep only the trained ones
        raise StitchError(f"no {which} stitches at {directory} (missing {path.name}): run `stitchllm stitch build`")
    tensors = load_file(path)
    d_large, d_small = family.large.config.hidden_size, family.small.config.hidden_size
    stitches = {}
    for cut, entry in manifest["cuts"]:
        key = f"{cut}-{entry}."
        own = {name.removeprefix(key): t for name, t in tensors.items() if name.startswith(key)}
        mlp = len(own["mlp.down.bias"]) if "mlp.down.bias" in own else 0
        layer = StitchLayer(d_large, d_small, cut, entry, mlp)
        adapter = {n.removeprefix("adapter."): t for n, t in own.items() if n.startswith("adapter.")}
        if adapter:
            layer.adapters = BlockAdapters.shaped_for(family.small, adapter)
        layer.load_tensors(own)
        stitches[layer.key] = layer.eval().requires_grad_(False)
    return stitches
