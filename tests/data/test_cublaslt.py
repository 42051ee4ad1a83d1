"""Products through cuBLASLt on each shape's fastest algorithm equal torch's products."""

from __future__ import annotations

import pytest
import torch

from ctrlpost.data import t5
from ctrlpost.data.cublaslt import TunedProducts

from .test_packed_attention import wide_heads_t5
from .test_t5 import padded_batch


def test_no_tuned_products_off_cuda() -> None:
    """On CPU there is no cuBLASLt: the encoder keeps torch's products and its numbers."""
    assert TunedProducts.load(torch.device("cpu")) is None
    model = wide_heads_t5()
    tuned = t5.T5Encoder.from_transformers(model, torch.float32, fused_products=True,
                                           tune_products=True)
    assert tuned.tuned_products is None
    ids_B_L, mask_B_L = padded_batch([5, 2])
    plain = t5.T5Encoder.from_transformers(model, torch.float32)
    torch.testing.assert_close(tuned(ids_B_L, mask_B_L), plain(ids_B_L, mask_B_L))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tuned_products_equal_torch_products(dtype: torch.dtype) -> None:
    """ReLU and plain products and the in-place float32 update, at two row counts of one
    shape class (timed once, the second reusing the first's pick) and one of another; the
    timing runs leave the accumulated output updated exactly once."""
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device (run them with `nox -s gpu` on one)")
    device = torch.device("cuda")
    tuned = TunedProducts.load(device)
    assert tuned is not None
    generator = torch.Generator(device).manual_seed(0)
    w_in = torch.randn(4096, 256, device=device, generator=generator).to(dtype) / 16
    w_out = torch.randn(256, 4096, device=device, generator=generator).to(dtype) / 64
    classes = []
    for rows in (1030, 1100, 300):
        x = torch.randn(rows, 256, device=device, generator=generator).to(dtype)
        relu = tuned.linear(x, w_in, relu=True)
        torch.testing.assert_close(relu, torch.relu(x @ w_in.t()), atol=2e-2, rtol=2e-2)
        assert relu.dtype == dtype and bool((relu >= 0).all())
        torch.testing.assert_close(tuned.linear(x, w_in), x @ w_in.t(), atol=2e-2, rtol=2e-2)
        hidden = torch.randn(rows, 256, device=device, generator=generator)
        want = hidden + (relu.float() @ w_out.float().t())
        assert tuned.add_linear(hidden, relu, w_out) is hidden
        torch.testing.assert_close(hidden, want, atol=2e-3, rtol=2e-3)
        classes.append(len(tuned.fastest))
    assert classes == [3, 3, 6]  # three products per class; 1100 rows reused 1030's picks
