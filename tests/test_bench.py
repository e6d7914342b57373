"""Benchmarks are not tests; this only checks that `stitchllm bench` runs end to end and prints valid JSON."""

import json
import os
import subprocess
import sys

import pytest


def test_bench_smoke_prints_valid_json(tiny_catalog, tiny_parent_dir, tiny_sibling, tmp_path):
    _, stitch_dir, _, _ = tiny_catalog
    text = tmp_path / "prompts.txt"
    text.write_text("Benchmarks drive the engine with Poisson arrivals and report latency percentiles. " * 40)
    env = os.environ | {"STITCHLLM_HOME": str(_router_home(tiny_catalog))}
    result = subprocess.run(
        [sys.executable, "-m", "stitchllm.cli", "bench", "--model", str(tiny_parent_dir), "--small",
         str(tiny_sibling[0]), "--stitches", str(stitch_dir), "--policies", "large,random,auto", "--rates", "4",
         "--duration", "2", "--saturation-duration", "2", "--prompt-tokens", "16", "--output-tokens", "4",
         "--concurrency", "4", "--peer-batch", "4",
         "--text", str(text), "--json"], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert [r["policy"] for r in report["results"]] == ["large", "random", "auto"]
    assert set(report["saturation"]) == {"large", "random", "auto"}
    large = report["results"][0]
    assert large["route_mix"] == {"large": 1.0} and large["quality_top1"] == 1.0
    assert large["requests"] > 0 and large["throughput_tok_s"] > 0 and 0.0 <= large["slo_attainment"] <= 1.0
    assert large["goodput_rps"] == pytest.approx(large["slo_attainment"] * large["requests"] / 2.0)  # --duration 2
    assert report["saturation_quality"]["large"]["top1"] == 1.0
    (peer,) = report["peers"]  # no GGUF for a tiny model: transformers only
    assert peer["system"] == "transformers generate (batch 4)" and peer["throughput_tok_s"] > 0


def _router_home(tiny_catalog):
    """The STITCHLLM_HOME under which the fixture saved the router (routers/<stitches fingerprint>/)."""
    from stitchllm.stitch.store import stitches_fingerprint

    _, stitch_dir, _, _ = tiny_catalog
    fp = stitches_fingerprint(stitch_dir)
    for candidate in stitch_dir.parent.iterdir():
        if (candidate / "routers" / fp / "router.json").is_file():
            return candidate
    raise FileNotFoundError("router home not found")


def test_quality_labels_are_cached_per_requests(tiny_catalog, tmp_path, monkeypatch):
    """The bench's quality labels are built once per family, stitches and requests, then read back exactly."""
    import torch

    from stitchllm.bench import run
    from stitchllm.bench.workload import make_requests

    catalog, stitch_dir, _, _ = tiny_catalog
    monkeypatch.setenv("STITCHLLM_HOME", str(tmp_path))
    requests = make_requests(torch.arange(3, 400), 6, 16, 4)
    built = run.quality_labels(catalog, stitch_dir, requests, 16)

    def rebuilt(*args, **kwargs):
        raise RuntimeError("labels rebuilt instead of read")

    monkeypatch.setattr(run, "build_dataset", rebuilt)
    again = run.quality_labels(catalog, stitch_dir, requests, 16)
    assert again.route_names == built.route_names and torch.equal(again.nll, built.nll)
    with pytest.raises(RuntimeError, match="labels rebuilt"):  # other requests: built afresh
        run.quality_labels(catalog, stitch_dir, make_requests(torch.arange(3, 400), 5, 16, 4), 16)
