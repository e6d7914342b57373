"""Peer systems measured in the same bench run: transformers `generate` (static batches) and llama.cpp (one stream,
and many sequences batched).

All serve the large model alone on the same prompts, greedy, exactly `output_tokens` new tokens each (EOS
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


def llama_cpp_batched(gguf: Path, requests: list[BenchRequest], output_tokens: int, concurrency: int,
                      threads: int) -> dict | None:
    """`concurrency` requests decoded together through llama.cpp's batched API (one `llama_decode` a step carries
    a token of every sequence, each in its own KV sequence), greedy, exactly `output_tokens` new tokens each: a
    static batch, so the wall time counts every prompt's prefill and every step; `outputs` holds each sequence's
    tokens. None without the `peers` extra."""
    try:
        import llama_cpp as lc
        from llama_cpp import _logger  # noqa: F401  (importing it routes llama.cpp's log to Python's, quietly)
    except ImportError:
        return None
    import numpy as np

    batch_requests = [requests[i % len(requests)] for i in range(concurrency)]
    longest = max(len(r.prompt) for r in batch_requests)
    lc.llama_backend_init()
    model = lc.llama_model_load_from_file(str(gguf).encode(), lc.llama_model_default_params())
    params = lc.llama_context_default_params()
    params.n_ctx = concurrency * (longest + output_tokens + 8)
    params.n_batch = params.n_ubatch = max(512, concurrency)
    params.n_seq_max, params.n_threads, params.n_threads_batch = concurrency, threads, threads
    ctx = lc.llama_init_from_model(model, params)
    n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    batch = lc.llama_batch_init(params.n_batch, 0, 1)

    def decode(entries: list[tuple[int, int, int, bool]]) -> None:
        """entries: (token, position, sequence, wants logits), at most n_batch of them."""
        batch.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
            batch.seq_id[i][0] = seq
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def greedy(i: int) -> int:
        return int(np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, i), shape=(n_vocab,)).argmax())

    try:
        start = time.perf_counter()
        next_token = []
        for seq, r in enumerate(batch_requests):  # each prompt in chunks of n_batch; its last position's logits
            for at in range(0, len(r.prompt), params.n_batch):
                chunk = r.prompt[at:at + params.n_batch]
                decode([(t, at + j, seq, at + j == len(r.prompt) - 1) for j, t in enumerate(chunk)])
            next_token.append(greedy(len(chunk) - 1))
        outputs = [[t] for t in next_token]
        for step in range(1, output_tokens):  # one token of every sequence a step
            decode([(next_token[seq], len(r.prompt) + step - 1, seq, True) for seq, r in enumerate(batch_requests)])
            next_token = [greedy(i) for i in range(concurrency)]
            for out, t in zip(outputs, next_token):
                out.append(t)
        wall = time.perf_counter() - start
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)
        lc.llama_model_free(model)
    return {"system": f"llama.cpp (llama-cpp-python, {concurrency} sequences batched, GGUF weights)",
            "throughput_tok_s": concurrency * output_tokens / wall, "requests": concurrency, "wall_s": round(wall, 2),
            "outputs": outputs}
