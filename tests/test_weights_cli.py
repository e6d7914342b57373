"""--weights on the command line (issue 36): `generate` and `serve` run the tiny model with quantised block weights,
and a format that is unknown or cannot run here is refused in one line, exit 2, before any model loads."""

import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from server_util import free_port
from stitchllm.models.cpu import DISABLE_INT8_ENV, cpu_features


def needs(fmt: str):
    ok = getattr(cpu_features(), f"{fmt}_weights")
    return pytest.param(fmt, marks=pytest.mark.skipif(not ok, reason=f"no {fmt} kernel in this PyTorch/CPU"))


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stitchllm.cli", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def generated(model_dir, weights: str) -> str:
    result = run_cli("generate", "def fibonacci(n):", "--max-tokens", "8", "--temperature", "0",
                     "--model", str(model_dir), "--weights", weights)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def fp32_text(tiny_parent_dir):
    return generated(tiny_parent_dir, "fp32")


@pytest.mark.parametrize("fmt", [needs("int8"), needs("int4")])
def test_generate_with_quantised_weights(tiny_parent_dir, fp32_text, fmt):
    fp32, quantised = fp32_text, generated(tiny_parent_dir, fmt)
    # both complete the prompt; how closely the logits track fp32 is tests/test_weights.py's job (a near-tie among
    # a random tiny model's tokens may flip under int8's ~1.5% logit error on another CPU's kernel)
    assert fp32.strip() and quantised.strip()


@pytest.mark.parametrize("command, weights, env, message", [
    ("generate", "bogus", {}, "error: unknown weight format 'bogus': use auto, fp32, int8, int4"),
    ("serve", "bogus", {}, "error: unknown weight format 'bogus': use auto, fp32, int8, int4"),
    ("serve", "int8", {DISABLE_INT8_ENV: "0"}, "error: int8 weights need PyTorch's CPU kernel"),  # as on a CPU without
])
def test_bad_weight_format_is_one_line_exit_2(tmp_path, command, weights, env, message):
    # a model that does not exist: the format must be refused before anything tries to load it
    args = [command] + (["hi"] if command == "generate" else []) + ["--model", str(tmp_path / "none")]
    result = run_cli(*args, "--weights", weights, env=os.environ | env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr


@pytest.mark.skipif(not cpu_features().int8_weights, reason="no int8 kernel in this PyTorch/CPU")
def test_serve_with_int8_weights(tiny_parent_dir, tiny_small_dir, tmp_path):
    port = free_port()
    env = os.environ | {"STITCHLLM_HOME": str(tmp_path)}  # no stitches: policy auto serves on `large`
    server = subprocess.Popen(
        [sys.executable, "-m", "stitchllm.cli", "serve", "--port", str(port), "--model", str(tiny_parent_dir),
         "--small", str(tiny_small_dir), "--max-model-len", "256", "--kv-budget-mb", "64", "--weights", "int8"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=60)
        raw = client.completions.with_raw_response.create(model="auto", prompt="def fibonacci(n):", max_tokens=8,
                                                          temperature=0, extra_body={"ignore_eos": True})
        body = raw.parse()
        assert raw.status_code == 200 and body.usage.completion_tokens == 8
        assert body.choices[0].finish_reason == "length" and body.choices[0].text
        assert httpx.get(f"{base}/health").json() == {"status": "ok"}  # the engine thread did not fail
        metrics = httpx.get(f"{base}/metrics").text
        assert "stitchllm_generation_tokens_total 8.0" in metrics
        assert 'stitchllm_requests_total{finish_reason="length",route="large"} 1.0' in metrics
    finally:
        server.terminate()
        output = server.communicate(timeout=60)[0]
    assert "int8 weights" in output  # the banner names the format it serves
