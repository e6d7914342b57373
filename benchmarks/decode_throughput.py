"""Decode throughput of the block runtime vs transformers' `generate`, same weights, same run.

    .venv/bin/python benchmarks/decode_throughput.py [--batches 1,8,32,64] [--prompt-tokens 64] [--new-tokens 128]

Prompts are real text cut to exactly --prompt-tokens tokens; both sides decode greedily for exactly --new-tokens
tokens (EOS ignored). Output tokens/s = batch * new tokens / wall time of the whole generate call (prefill
included). Batch sizes alternate between the two systems so machine drift hits both alike.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from stitchllm.generation import generate, model_last_logits
from stitchllm.models.loader import load_model, load_tokenizer, resolve_model_dir
from stitchllm.sampling import SamplingParams


def make_prompts(tokenizer, batch: int, length: int) -> list[list[int]]:
    """Distinct real-text prompts of exactly `length` tokens (Python's own docstrings)."""
    import inspect

    text = inspect.getdoc(json) + inspect.getdoc(argparse) + inspect.getdoc(time)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [ids[i * 7 : i * 7 + length] for i in range(batch)]


def run_ours(model, prompts, new_tokens: int) -> float:
    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    start = time.perf_counter()
    out = generate(model_last_logits(model, len(prompts), len(prompts[0]) + new_tokens), prompts, params, set())
    elapsed = time.perf_counter() - start
    assert all(len(o) == new_tokens for o in out)
    return len(prompts) * new_tokens / elapsed


@torch.inference_mode()
def run_transformers(hf, prompts, new_tokens: int) -> float:
    ids = torch.tensor(prompts)
    start = time.perf_counter()
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                      min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    elapsed = time.perf_counter() - start
    assert out.shape[1] == ids.shape[1] + new_tokens
    return len(prompts) * new_tokens / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    model_dir = resolve_model_dir(args.model)
    ours = load_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    run_ours(ours, make_prompts(tokenizer, 2, args.prompt_tokens), 4)  # warm-up both
    run_transformers(hf, make_prompts(tokenizer, 2, args.prompt_tokens), 4)
    rows = []
    for b in [int(x) for x in args.batches.split(",")]:
        prompts = make_prompts(tokenizer, b, args.prompt_tokens)
        t_ours = run_ours(ours, prompts, args.new_tokens)
        t_hf = run_transformers(hf, prompts, args.new_tokens)
        rows.append({"batch": b, "stitchllm_tok_s": round(t_ours, 1), "transformers_tok_s": round(t_hf, 1),
                     "speedup": round(t_ours / t_hf, 2)})
        print(f"batch {b:>3}: stitchllm {t_ours:7.1f} tok/s   transformers {t_hf:7.1f} tok/s   x{t_ours / t_hf:.2f}",
              flush=True)
    print(json.dumps({"torch_threads": torch.get_num_threads(), "results": rows}))


if __name__ == "__main__":
    main()
