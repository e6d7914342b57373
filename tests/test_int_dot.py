"""The integer dot-product kernel (models/int_dot.py, kernels/int_dot.cpp): it computes exactly what its rounding
of the activations says, holds the weights it was given, tracks fp32, rejects bad input, and `gguf` weights use it
where it builds (PyTorch's kernels with STITCHLLM_INT_DOT=0)."""

import pytest
import torch

from stitchllm.models import int_dot
from stitchllm.models.int_dot import GROUP, IntDotWeight, int_dot_available
from stitchllm.models.quantized import Int8Weight

pytestmark = pytest.mark.skipif(not int_dot_available(), reason="the int-dot kernel does not build with vector "
                                                                "dot products here")


def rounded(x: torch.Tensor) -> torch.Tensor:
    """x [M, K] as the kernel rounds it: int8 per group of 32, scale max|x| / 127."""
    groups = x.view(x.shape[0], -1, GROUP)
    amax = groups.abs().amax(-1, keepdim=True)
    q = torch.round(groups * torch.where(amax > 0, 127 / amax, torch.zeros_like(amax)))
    return (q * amax / 127).view_as(x)


def int4_weight(n: int, k: int, seed: int = 0) -> tuple[IntDotWeight, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k), generator=g)
    scale = torch.rand(n, k // GROUP, generator=g) * 0.02
    zero = torch.randn(n, k // GROUP, generator=g) * 0.02
    return IntDotWeight.from_int4_levels(q, scale, zero), q, scale, zero


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 64])
def test_int4_kernel_is_exact_for_its_rounded_activations(rows):
    weight, q, scale, zero = int4_weight(37, 96)
    x = torch.randn(rows, 96)
    w = weight.dense()
    # the levels meet the rounded activations; the zeros meet the exact ones (their sum is taken before rounding)
    levels_part = rounded(x) @ ((q.float() - 8).view(37, 3, GROUP) * scale.bfloat16().float()[..., None]).view(37, 96).T
    zeros_part = x.view(rows, 3, GROUP).sum(-1) @ zero.bfloat16().float().T
    y = weight.matmul(x, amx=False)  # the vector kernel, whatever the batch
    torch.testing.assert_close(y, levels_part + zeros_part, rtol=1e-5, atol=1e-5)
    assert ((y - x @ w.T).norm() / (x @ w.T).norm()).item() < 1e-2  # fp32 activations


@pytest.mark.parametrize("rows", [1, 4, 7])
def test_int8_kernel_is_exact_for_its_rounded_activations(rows):
    rows_weight = Int8Weight(torch.randn(45, 64) * 0.05)
    weight = IntDotWeight.from_int8(rows_weight.q, rows_weight.scales)
    torch.testing.assert_close(weight.dense(), rows_weight.dense(), rtol=0, atol=0)
    x = torch.randn(rows, 64)
    torch.testing.assert_close(weight.matmul(x, amx=False), rounded(x) @ rows_weight.dense().T, rtol=1e-5, atol=1e-5)


amx = pytest.mark.skipif(not int_dot_available() or not torch.ops.stitchllm_int_dot.int_dot_amx(),
                         reason="no AMX tiles on this CPU")


@amx
@pytest.mark.parametrize("rows", [16, 33, 64, 100])
@pytest.mark.parametrize("bits", [4, 8])
def test_amx_batches_multiply_the_weights_in_bf16(rows, bits):
    """From 16 rows the kernel de-quantises into bf16 tiles: it then computes what bf16 weights and activations give,
    and tracks fp32 more closely than int8 activations do (~2.4e-3 against ~5e-3)."""
    if bits == 4:
        weight, *_ = int4_weight(40, 1536, seed=rows)  # 5 blocks of 8 outputs: the last tile of 16 half empty
    else:
        rows_weight = Int8Weight(torch.randn(40, 1536) * 0.05)
        weight = IntDotWeight.from_int8(rows_weight.q, rows_weight.scales)
    x, w = torch.randn(rows, 1536), weight.dense()
    y = weight.matmul(x)
    bf16 = x.bfloat16().float() @ w.bfloat16().float().T
    torch.testing.assert_close(y, bf16, rtol=1e-4, atol=1e-4 * bf16.abs().max().item())
    exact = x @ w.T
    assert ((y - exact).norm() / exact.norm()).item() < 4e-3
    vector = weight.matmul(x, amx=False)
    assert ((vector - exact).norm() / exact.norm()).item() > ((y - exact).norm() / exact.norm()).item()


@amx
@pytest.mark.parametrize("rows", [1, 4, 15])
def test_amx_leaves_small_batches_to_the_vector_kernel(rows):
    weight, *_ = int4_weight(40, 256)
    x = torch.randn(rows, 256)
    assert torch.equal(weight.matmul(x), weight.matmul(x, amx=False))


def test_int4_weight_keeps_every_level():
    weight, q, scale, zero = int4_weight(16, 64, seed=1)
    scale, zero = scale.bfloat16().float()[..., None], zero.bfloat16().float()[..., None]
    stored = (q.float() - 8).view(16, 2, GROUP) * scale + zero
    torch.testing.assert_close(weight.dense(), stored.view(16, 64), rtol=0, atol=0)
    assert weight.nbytes == 16 * 64 // 2 + 2 * 16 * 2 * 2  # half a byte a weight, a bf16 scale and zero a group


def test_int8_weight_is_a_byte_a_weight_and_a_scale_a_row():
    rows_weight = Int8Weight(torch.randn(16, 64))
    weight = IntDotWeight.from_int8(rows_weight.q, rows_weight.scales)
    assert weight.nbytes == 16 * 64 + 16 * 4


def test_kernel_rejects_bad_input():
    weight, *_ = int4_weight(16, 64)
    op = torch.ops.stitchllm_int_dot.int_dot_mm
    with pytest.raises(RuntimeError, match="in_features must be a positive multiple of 32"):
        op(torch.randn(2, 48), weight.levels, weight.scales, weight.zeros, 4, 16)
    with pytest.raises(RuntimeError, match=r"levels must be \[ceil\(N / 8\), K \* bits\] uint8"):
        op(torch.randn(2, 64), weight.levels, weight.scales, weight.zeros, 4, 17)
    with pytest.raises(RuntimeError, match=r"x must be \[M, K\] fp32"):
        op(torch.randn(2, 64).bfloat16(), weight.levels, weight.scales, weight.zeros, 4, 16)
    with pytest.raises(RuntimeError, match="bits must be 4 or 8"):
        op(torch.randn(2, 64), weight.levels, weight.scales, weight.zeros, 2, 16)
    with pytest.raises(RuntimeError, match="8-bit scales must be"):
        op(torch.randn(2, 64), torch.zeros(2, 512, dtype=torch.uint8), weight.scales, weight.zeros, 8, 16)


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv(int_dot.DISABLE_ENV, "0")
    assert int_dot.int_dot_available.__wrapped__() is False


def test_amx_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv(int_dot.AMX_ENV, "0")
    assert int_dot.amx_allowed.__wrapped__() is False


def test_describe_names_the_kernel_in_use(monkeypatch):
    assert torch.ops.stitchllm_int_dot.int_dot_isa() in int_dot.describe()
    monkeypatch.setenv(int_dot.AMX_ENV, "0")
    int_dot.amx_allowed.cache_clear()
    try:
        assert "AMX" not in int_dot.describe()
    finally:
        monkeypatch.undo()
        int_dot.amx_allowed.cache_clear()
