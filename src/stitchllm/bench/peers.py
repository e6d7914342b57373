"""Peer systems measured in the same bench run: transformers `generate` (static batches) and llama.cpp.

Both serve the large model alone on the same prompts, greedy, exactly `output_tokens` new tokens each (EOS
ignored), so their output tokens/s compare directly with the engine's saturation figure for `large`.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from stitchllm.bench.workload import BenchRequest


@torch.inference_mode()
def transformers_generate(model_dir: Path, requests: list[BenchRequest], batch: int, output_tokens: int,
                          duration: float, dtype: torch.dtype = torch.float32) -> dict:
    """Static batches of `batch` prompts through `AutoModelForCausalLM.generate` until `duration` has passed, the
    whole model in `dtype` (transformers has no mixed mode: a bf16 model keeps its activations in bf16 too)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    prompts = [r.prompt for r in requests]
    hf.generate(torch.tensor(prompts[:2]), max_new_tokens=2, do_sample=False, pad_token_id=0)  # warm-up
    tokens, sent, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < duration:
        ids = torch.tensor([prompts[(sent + i) % len(prompts)] for i in range(batch)])  # equal lengths: no padding
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=output_tokens,
                          min_new_tokens=output_tokens, do_sample=False, pad_token_id=0)
        tokens += (out.shape[1] - ids.shape[1]) * batch
        sent += batch
    wall = time.perf_counter() - start
    name = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(dtype, str(dtype))
    return {"system": f"transformers generate (batch {batch}, {name})", "throughput_tok_s": tokens / wall,
            "requests": sent, "wall_s": round(wall, 2)}


def llama_cpp_single_stream(gguf: Path, requests: list[BenchRequest], output_tokens: int, duration: float,
                            threads: int) -> dict | None:
    """One request at a time through llama-cpp-python on the GGUF file (its own quantised weights);
    None when the optional `peers` extra is not installed."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=str(gguf), n_ctx=len(requests[0].prompt) + output_tokens + 8, n_threads=threads,
                n_batch=512, verbose=False)
    tokens, sent, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < duration:
        llm.reset()
        # `generate` never stops on its own (EOS handling lives in create_completion): take exactly N tokens
        for n, _ in enumerate(llm.generate(requests[sent % len(requests)].prompt, top_k=1, temp=0.0), start=1):
            if n == output_tokens:
                break
        tokens += output_tokens
        sent += 1
    wall = time.perf_counter() - start
    return {"system": "llama.cpp (llama-cpp-python, single stream, GGUF weights)", "throughput_tok_s": tokens / wall,
            "requests": sent, "wall_s": round(wall, 2)}
