"""Benchmarks are not tests; this only checks that `stitchllm bench` runs end to end and prints valid JSON."""

import json
import os
import subprocess
import sys

import pytest


def test_bench_smoke_prints_valid_json(tiny_catalog, tiny_parent_dir, tiny_sibling, tmp_path):
    """bf16 matmuls where this CPU runs them (the engine and a like-for-like transformers peer), fp32 elsewhere."""
    from stitchllm.models.cpu import cpu_features

    dtype = "bfloat16" if cpu_features().bf16_matmul else "float32"
    _, stitch_dir, _, _ = tiny_catalog
    text = tmp_path / "prompts.txt"
    text.write_text("Benchmarks drive the engine with Poisson arrivals and report latency percentiles. " * 40)
    env = os.environ | {"STITCHLLM_HOME": str(_router_home(tiny_catalog))}
    result = subprocess.run(
        [sys.executable, "-m", "stitchllm.cli", "bench", "--model", str(tiny_parent_dir), "--small",
         str(tiny_sibling[0]), "--stitches", str(stitch_dir), "--policies", "large,random,auto", "--rates", "4",
         "--duration", "2", "--saturation-duration", "2", "--prompt-tokens", "16", "--output-tokens", "4",
         "--concurrency", "4", "--peer-batch", "4", "--matmul-dtype", dtype,
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
    assert report["config"]["matmul_dtype"] == dtype
    # no GGUF for a tiny model: transformers only, in fp32 and (like the engine) bf16
    assert [p["system"] for p in report["peers"]] == ["transformers generate (batch 4, fp32)"] + (
        ["transformers generate (batch 4, bf16)"] if dtype == "bfloat16" else [])
    assert all(p["throughput_tok_s"] > 0 for p in report["peers"])


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


@pytest.fixture(scope="module")
def bench_server(tiny_catalog):
    """A live server (real uvicorn, HTTP on 127.0.0.1) on the tiny family, behind an API key."""
    from server_util import live_server
    from stitchllm.engine.async_engine import AsyncEngine
    from stitchllm.engine.config import EngineConfig
    from stitchllm.engine.llm_engine import LLMEngine
    from stitchllm.server.app import create_app

    catalog, _, router, manifest = tiny_catalog
    engine = LLMEngine(catalog, EngineConfig(max_model_len=64, policy="auto"), router, manifest["thresholds"])
    with live_server(create_app(AsyncEngine(engine), catalog.family.tokenizer, "bench-key")) as url:
        yield url


def test_bench_drives_a_live_server_over_http(tiny_catalog, bench_server, tmp_path, monkeypatch):
    """--url: the same report from streamed HTTP requests; routes as the server names them, exact token counts."""
    import torch

    from stitchllm.bench.http_driver import ServerTarget
    from stitchllm.bench.run import BenchConfig, run_bench

    catalog, stitch_dir, _, _ = tiny_catalog
    monkeypatch.setenv("STITCHLLM_HOME", str(tmp_path))
    cfg = BenchConfig(policies=("large", "small", "auto"), rates=(4.0,), duration=2, saturation_duration=60,
                      saturation_requests=10, prompt_tokens=16, output_tokens=4, concurrency=4, num_requests=8,
                      peers=False)
    report = run_bench(catalog, stitch_dir, torch.arange(3, 400), cfg, target=ServerTarget(bench_server, "bench-key"))
    large, small, auto = report["results"]
    assert large["route_mix"] == {"large": 1.0} and large["quality_top1"] == 1.0
    assert small["route_mix"] == {"small": 1.0} and small["quality_top1"] < 1.0
    assert set(auto["route_mix"]) <= {r.name for r in catalog.routes}
    for row in report["results"] + report["saturation_detail"]:
        assert row["failed"] == 0 and row["requests"] > 0
        # every request streamed exactly output_tokens tokens (the server's usage count); wall_s is rounded to 10 ms
        assert row["throughput_tok_s"] == pytest.approx(row["requests"] * 4 / row["wall_s"],
                                                        rel=0.01 + 0.005 / row["wall_s"])
        assert 0 < row["ttft_p50_ms"] <= row["e2e_p50_ms"]
    assert report["config"]["server"] == bench_server
    assert [r["requests"] for r in report["saturation_detail"]] == [10, 10, 10]  # the cap, long before 60 s


def test_server_target_fails_clearly(bench_server):
    from server_util import free_port
    from stitchllm.bench.http_driver import ServerTarget
    from stitchllm.bench.workload import BenchRequest
    from stitchllm.errors import StitchError

    with pytest.raises(StitchError, match="cannot reach the server"):
        ServerTarget(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StitchError, match=r"refused the API key \(401\)"):
        ServerTarget(bench_server, "wrong-key")
    target = ServerTarget(bench_server + "/", "bench-key")
    assert target.model_for("fixed:L3-S1") == "L3-S1" and target.model_for("auto") == "auto"
    with pytest.raises(StitchError, match="one of the server's models"):
        target.model_for("random")  # an engine policy, not a model the server serves
    # a request the server rejects (prompt beyond its context) is recorded as failed; the run goes on
    too_long = BenchRequest(0, list(range(3, 83)), [5])
    records, _ = target.open_loop("large", [too_long], [0.0, 0.05], 4)
    assert [r.error[:8] for r in records] == ["HTTP 400", "HTTP 400"] and all(not r.token_times for r in records)


def test_sweep_rates_span_the_large_models_capacity(tiny_catalog, tmp_path, monkeypatch):
    import torch

    from stitchllm.bench.run import BenchConfig, run_bench, sweep_rates

    rows = [{"policy": "small", "throughput_rps": 3.0}, {"policy": "large", "throughput_rps": 2.0}]
    assert sweep_rates(rows) == (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
    assert sweep_rates(rows[:1]) == (0.75, 1.5, 2.25, 3.0, 3.75, 4.5)  # no `large`: the first policy's
    # --sweep runs saturation first and takes the rates from it
    catalog, stitch_dir, _, _ = tiny_catalog
    monkeypatch.setenv("STITCHLLM_HOME", str(tmp_path))
    cfg = BenchConfig(policies=("large",), sweep=True, duration=0.5, saturation_duration=60, saturation_requests=12,
                      prompt_tokens=16, output_tokens=4, concurrency=4, num_requests=8, peers=False, repeats=2)
    report = run_bench(catalog, stitch_dir, torch.arange(3, 400), cfg)
    rates = list(sweep_rates(report["saturation_detail"]))
    assert report["config"]["rates"] == [r["rate"] for r in report["results"]] == rates and rates[0] > 0
    # two rounds of saturation; the headline is their mean steady rate
    steady = [r["steady_tok_s"] for r in report["saturation_detail"]]
    assert [r["repeat"] for r in report["saturation_detail"]] == [0, 1] and min(steady) > 0
    assert [r["requests"] for r in report["saturation_detail"]] == [12, 12]  # the cap, long before 60 s
    assert report["saturation"]["large"] == pytest.approx(sum(steady) / 2)


def test_steady_rate_counts_the_window_not_the_drain():
    from stitchllm.bench.driver import Record
    from stitchllm.bench.report import busy_window, paired_with_large, steady_tok_s
    from stitchllm.bench.workload import BenchRequest

    req = BenchRequest(0, [1, 2], [])
    records = [Record(req, 100.0, [100.5, 101.0, 101.5, 102.5]),  # 3 tokens within 2 s of the first send
               Record(req, 101.0, [101.2, 103.0]),  # 1
               Record(req, 101.5, [], error="HTTP 503"),  # failed: counts nothing
               Record(req, 101.0, [101.9, 106.0], output_tokens=8)]  # HTTP chunks: each stamp is 4 tokens
    assert steady_tok_s(records, 2.0) == pytest.approx((3 + 1 + 4) / 2.0)
    assert busy_window(records, duration=2.0, max_requests=0) == 2.0  # no cap: the loop's duration
    assert busy_window(records, duration=60.0, max_requests=4) == 1.5  # capped: until the last send
    assert busy_window(records, duration=60.0, max_requests=9) == 60.0  # the cap was not reached
    rows = [{"policy": "large", "problem_pass": {"0": 1.0, "1": 0.0, "2": 1.0}},
            {"policy": "large", "problem_pass": {"0": 0.0}},
            {"policy": "auto", "problem_pass": {"1": 1.0, "2": 1.0, "3": 0.0}}]
    assert paired_with_large(rows, "auto") == {"paired_problems": 2, "paired_pass_at_1": 1.0,
                                               "paired_large_pass_at_1": 0.5}
    assert paired_with_large(rows, "large")["paired_pass_at_1"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert paired_with_large(rows[2:], "auto") == {}  # no large run: nothing to pair with


def test_bench_config_rejects_bad_saturation_settings():
    from stitchllm.bench.run import BenchConfig
    from stitchllm.errors import StitchError

    with pytest.raises(StitchError, match="repeats must be at least 1, got 0"):
        BenchConfig(repeats=0)
    with pytest.raises(StitchError, match=r"saturation requests must be 0 \(no cap\) or more, got -1"):
        BenchConfig(saturation_requests=-1)


def test_bench_rejects_rates_with_sweep():
    result = subprocess.run([sys.executable, "-m", "stitchllm.cli", "bench", "--sweep", "--rates", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr == "error: use --rates or --sweep, not both\n"


def test_bench_rejects_unknown_matmul_dtype():
    result = subprocess.run([sys.executable, "-m", "stitchllm.cli", "bench", "--matmul-dtype", "fp16"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == "error: unknown matmul dtype 'fp16': use auto, float32, bfloat16\n"


def test_bench_refuses_bf16_on_a_cpu_without_it():
    """What an AVX2-only CPU answers (STITCHLLM_CPU_BF16=0 makes any CPU answer so): one line, exit 2."""
    env = os.environ | {"STITCHLLM_CPU_BF16": "0"}
    result = subprocess.run([sys.executable, "-m", "stitchllm.cli", "bench", "--matmul-dtype", "bfloat16"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: bfloat16 matmuls need a CPU with AVX512BW/VL/DQ or AVX-NE-CONVERT")
    assert result.stderr.endswith("use --matmul-dtype auto or float32\n")
