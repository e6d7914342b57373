"""bench/peers.py's llama.cpp peers, on the embedded SmolLM2 GGUF (they need the optional `peers` extra, and are
skipped without it): the batched API decodes every sequence as llama.cpp decodes it alone."""

import pytest

from stitchllm.bench.peers import llama_cpp_batched
from stitchllm.bench.workload import BenchRequest
from stitchllm.paths import embedded_gguf_path

llama_cpp = pytest.importorskip("llama_cpp")


def test_batched_sequences_decode_as_one_stream_does(smollm2):
    tokenizer = smollm2[1]
    prompts = [tokenizer(text)["input_ids"] for text in ("def add(a, b):", "The capital of France is", "import os\n")]
    row = llama_cpp_batched(embedded_gguf_path(), [BenchRequest(i, p, []) for i, p in enumerate(prompts)], 8, 3, 2)
    assert row["requests"] == 3 and len(row["outputs"]) == 3
    llm = llama_cpp.Llama(model_path=str(embedded_gguf_path()), n_ctx=64, n_threads=2, verbose=False)
    for prompt, batched in zip(prompts, row["outputs"]):
        llm.reset()
        alone = [token for _, token in zip(range(8), llm.generate(prompt, top_k=1, temp=0.0))]
        assert batched == alone
