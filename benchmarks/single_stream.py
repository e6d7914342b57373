"""Single-stream decode: the block runtime (fp32) vs llama.cpp on the embedded GGUF (its own 4-bit weights).

    .venv/bin/pip install -e '.[peers]'      # compiles llama.cpp (~10 min on 2 cores)
    .venv/bin/python benchmarks/single_stream.py [--prompt-tokens 64] [--new-tokens 128] [--seconds 30]

Same prompts (held-out text), greedy, exactly --new-tokens tokens each (EOS ignored); each system decodes one
request after another for --seconds, the two back to back in one run. llama.cpp reads 4x fewer weight bytes per
token (Q4_1), so this is an efficiency reference, not a like-for-like comparison.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from stitchllm.bench.peers import llama_cpp_single_stream
from stitchllm.bench.workload import make_requests
from stitchllm.data.corpus import python_docs_text
from stitchllm.generation import generate, model_last_logits
from stitchllm.models.loader import load_model, load_tokenizer, resolve_model_dir
from stitchllm.paths import embedded_gguf_path
from stitchllm.sampling import SamplingParams


def runtime_single_stream(model, requests, new_tokens: int, seconds: float) -> float:
    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    tokens, sent, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        prompt = requests[sent % len(requests)].prompt
        (out,) = generate(model_last_logits(model, 1, len(prompt) + new_tokens), [prompt], params, set())
        tokens, sent = tokens + len(out), sent + 1
    return tokens / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    model_dir = resolve_model_dir("default")
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)  # load_model pre-packs the linears
    ids = torch.tensor(tokenizer(python_docs_text("heldout"), add_special_tokens=False)["input_ids"])
    requests = make_requests(ids, 16, args.prompt_tokens, args.new_tokens)
    ours = runtime_single_stream(model, requests, args.new_tokens, args.seconds)
    peer = llama_cpp_single_stream(embedded_gguf_path(), requests, args.new_tokens, args.seconds,
                                   torch.get_num_threads())
    if peer is None:
        raise SystemExit("llama-cpp-python is not installed: pip install -e '.[peers]'")
    print(json.dumps({"stitchllm_runtime_tok_s": round(ours, 1), "llama_cpp_tok_s": round(peer["throughput_tok_s"], 1),
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
