"""Single-stream decode of a family member in each weight format against llama.cpp on the very same GGUF, in one run.

    python benchmarks/single_stream.py --family qwen2.5-coder [--member large|small] [--formats fp32,int4,gguf]
        [--rounds 2] [--json F]

The same 64 prompt tokens (the validation split's first) for every system, then 128 new tokens, greedy, EOS
ignored. Format `gguf-aten` is `gguf` on PyTorch's own int4/int8 kernels instead of the integer dot-product kernel
(models/int_dot.py; STITCHLLM_INT_DOT=0 for that system alone). StitchLLM runs its block runtime with a KV cache
(`stitchllm.generation.generate`, fp32 matmuls, `--weights` as given); llama.cpp runs through llama-cpp-python (the `peers` extra) on the family's Q4_K_M GGUF
with as many threads as PyTorch uses. Each system is loaded once and runs its rounds back to back, one system after
another; per system: the median over rounds of the time to the first new token (the prefill) and of the decode
rate of the other 127.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time


def stitchllm_runs(model_dir: str, fmt: str, prompt: list[int], new_tokens: int, rounds: int) -> list[tuple]:
    from stitchllm.generation import generate, model_last_logits
    from stitchllm.models import int_dot
    from stitchllm.models.loader import load_model
    from stitchllm.sampling import SamplingParams

    int_dot.int_dot_available.cache_clear()
    os.environ[int_dot.DISABLE_ENV] = "0" if fmt == "gguf-aten" else "1"
    model = load_model(model_dir, weights=fmt.removesuffix("-aten"))
    runs = []
    for _ in range(rounds):
        stamps = []
        params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        start = time.perf_counter()
        generate(model_last_logits(model, 1, len(prompt) + new_tokens), [prompt], params, set(),
                 on_token=lambda _, t: stamps.append(time.perf_counter()))
        runs.append((stamps[0] - start, (len(stamps) - 1) / (stamps[-1] - stamps[0])))
    del model
    gc.collect()
    return runs


def llama_cpp_runs(gguf: str, prompt: list[int], new_tokens: int, rounds: int, threads: int) -> list[tuple]:
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_ctx=len(prompt) + new_tokens + 8, n_threads=threads, n_batch=512, verbose=False)
    runs = []
    for _ in range(rounds):
        llm.reset()
        stamps, start = [], time.perf_counter()
        for n, _ in enumerate(llm.generate(prompt, top_k=1, temp=0.0), start=1):
            stamps.append(time.perf_counter())
            if n == new_tokens:
                break
        runs.append((stamps[0] - start, (len(stamps) - 1) / (stamps[-1] - stamps[0])))
    return runs


def main() -> None:
    import torch

    from stitchllm.data.corpus import python_docs_text
    from stitchllm.family.registry import family_sources, model_gguf
    from stitchllm.models.loader import load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="qwen2.5-coder")
    ap.add_argument("--member", choices=("large", "small"), default="large")
    ap.add_argument("--formats", default="fp32,int4,gguf")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    large, small = family_sources(args.family)
    model_dir = large if args.member == "large" else small
    gguf = model_gguf(model_dir)
    prompt = load_tokenizer(model_dir)(python_docs_text("validation"), add_special_tokens=False)["input_ids"]
    prompt = prompt[: args.prompt_tokens]
    threads = torch.get_num_threads()
    systems = [(f"stitchllm {fmt}", lambda fmt=fmt: stitchllm_runs(model_dir, fmt, prompt, args.new_tokens,
                                                                    args.rounds))
               for fmt in args.formats.split(",")]
    if gguf is not None:
        systems.append(("llama.cpp Q4_K_M", lambda: llama_cpp_runs(str(gguf), prompt, args.new_tokens, args.rounds,
                                                                    threads)))
    rows = {}
    for name, run in systems:  # each printed (and saved) as it ends: a crash in a peer loses only the peer
        runs = run()
        rows[name] = {"prefill_s": statistics.median(r[0] for r in runs),
                      "decode_tok_s": statistics.median(r[1] for r in runs), "runs": runs}
        print(f"{name:>20}  first token after {rows[name]['prefill_s']:.2f} s  "
              f"decode {rows[name]['decode_tok_s']:.2f} tok/s", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "threads": threads, "gguf": str(gguf), "rows": rows}, f, indent=1)

if __name__ == "__main__":
    main()
