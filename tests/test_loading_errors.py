"""Bad models and bad input are refused with one clear line naming the cause."""

import json
import subprocess
import sys

import pytest

from conftest import save_tiny_hf_model
from stitchllm.errors import StitchError
from stitchllm.models.loader import load_model, load_tokenizer


def test_unsupported_architecture_is_named(tmp_path):
    save_tiny_hf_model(tmp_path, "llama")
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(StitchError, match="unsupported architecture model_type='gpt2'"):
        load_model(tmp_path)


def test_architecture_comes_from_config_not_path(tmp_path):
    odd = tmp_path / "qwen2-looking-name"
    save_tiny_hf_model(odd, "llama")
    assert load_model(odd).config.model_type == "llama"


def test_missing_weights_file(tmp_path):
    save_tiny_hf_model(tmp_path, "llama")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(StitchError, match="missing weights file"):
        load_model(tmp_path)


def test_missing_path():
    with pytest.raises(StitchError, match="model path not found"):
        load_model("/no/such/model/dir")


def test_tokenizer_mismatch(smollm2):
    _, _, model_dir = smollm2
    with pytest.raises(StitchError, match="tokenizer mismatch"):
        load_tokenizer(model_dir, vocab_size=1000)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stitchllm.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_bad_input_is_one_line_and_nonzero(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe not utf-8")
    cases = [(["generate", "", "--family", "smollm2"], "prompt is empty"),
             (["eval", "--text", str(bad)], "is not UTF-8 text"),
             (["generate", "hi", "--model", str(tmp_path / "nope")], "model path not found"),
             (["family", "derive", "--matmul-dtype", "fp8", "--out", str(tmp_path / "sib")],
              "unknown matmul dtype 'fp8'"),
             (["family", "derive", "--block-importance", "random", "--out", str(tmp_path / "sib")],
              "unknown block importance 'random'"),
             (["stitch", "build", "--matmul-dtype", "fp8"], "unknown matmul dtype 'fp8'"),
             (["stitch", "build", "--bogus"], "No such option: --bogus")]
    # started together: each spends its seconds importing, which two cores do side by side
    procs = [subprocess.Popen([sys.executable, "-m", "stitchllm.cli", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args, _ in cases]
    for proc, (args, message) in zip(procs, cases):
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, (args, stderr)
        assert message in stderr and "Traceback" not in stderr
        if "No such option" not in message:  # click prints usage lines above its own error line
            assert stderr.strip().splitlines() == [f"error: {stderr.strip()[7:]}"]


def test_prompt_longer_than_context_is_refused(smollm2):
    from stitchllm.prompting import encode_prompt

    _, tokenizer, _ = smollm2
    with pytest.raises(StitchError, match="no room to generate"):
        encode_prompt(tokenizer, "word " * 300, chat=False, context=128)


def test_cli_eval_large_json(tmp_path):
    text = tmp_path / "held_out.txt"
    text.write_text("Perplexity is the exponential of the mean negative log-likelihood per token. " * 20)
    result = run_cli("eval", "--text", str(text), "--routes", "large", "--json", "--window", "64", "--family", "smollm2")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (row,) = report["routes"]
    assert row["name"] == "large" and row["cost"] == 1.0
    assert row["tokens"] > 100 and 1.0 < row["ppl"] < 20.0  # repeated text is easy to predict
