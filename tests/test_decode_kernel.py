"""The CPU decode-attention kernel: builds here, matches SDPA over each sequence's own keys, rejects bad input,
and the runtime falls back to SDPA (with one line on stderr) where it cannot be built."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils import cpp_extension

from stitchllm.models import decode_kernel


@pytest.fixture(scope="module")
def kernel():
    built = decode_kernel.decode_attention_kernel()
    assert built is not None, "the decode-attention kernel did not build (is g++ installed?)"
    return built


def reference(q, k_cache, v_cache, slots, lengths):
    """Each sequence alone through SDPA over exactly its own keys: q [N, H, D] -> [N, H, D]."""
    rows = []
    for n, (slot, length) in enumerate(zip(slots.tolist(), lengths.tolist())):
        k, v = k_cache[slot, :, :length], v_cache[slot, :, :length]  # [KV, len, D]
        rows.append(F.scaled_dot_product_attention(q[n][:, None], k, v, enable_gqa=True)[:, 0])
    return torch.stack(rows)


@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (4, 4, 8), (8, 2, 16), (16, 2, 32)])
def test_kernel_matches_sdpa_per_sequence(kernel, heads, kv_heads, head_dim):
    gen = torch.Generator().manual_seed(heads)
    k_cache = torch.randn(7, kv_heads, 40, head_dim, generator=gen)
    v_cache = torch.randn(7, kv_heads, 40, head_dim, generator=gen)
    slots, lengths = torch.tensor([5, 0, 3, 6]), torch.tensor([1, 40, 17, 29])  # scattered slots, ragged lengths
    # q as the block makes it: the leading heads of a wider projection, so rows are not contiguous
    q = torch.randn(4, heads + kv_heads, head_dim, generator=gen)[:, :heads]
    got = kernel(q, k_cache, v_cache, slots, lengths, head_dim ** -0.5)
    torch.testing.assert_close(got, reference(q, k_cache, v_cache, slots, lengths), atol=1e-5, rtol=1e-5)


def test_kernel_rejects_bad_input(kernel):
    q, cache = torch.randn(2, 9, 64), torch.randn(4, 3, 16, 64)
    with pytest.raises(RuntimeError, match="slot or length out of range"):
        kernel(q, cache, cache, torch.tensor([0, 4]), torch.tensor([3, 3]), 0.125)
    with pytest.raises(RuntimeError, match="slot or length out of range"):
        kernel(q, cache, cache, torch.tensor([0, 1]), torch.tensor([3, 17]), 0.125)
    with pytest.raises(RuntimeError, match="float32 only"):
        kernel(q.double(), cache, cache, torch.tensor([0, 1]), torch.tensor([3, 3]), 0.125)


def test_unbuildable_kernel_falls_back_with_one_line(monkeypatch, tmp_path, capsys):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension 'stitchllm_decode_attention': c++: not found\nmore detail")

    monkeypatch.setenv("STITCHLLM_HOME", str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    assert decode_kernel.decode_attention_kernel.__wrapped__() is None
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("stitchllm: decode-attention kernel unavailable (Error building extension "
                       "'stitchllm_decode_attention': c++: not found); using PyTorch SDPA")
    monkeypatch.setenv("STITCHLLM_DECODE_KERNEL", "0")
    assert decode_kernel.decode_attention_kernel.__wrapped__() is None
