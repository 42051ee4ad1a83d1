"""The fused RMS norm kernel (Triton's interpreter on CPU, compiled on GPU) gives
``F.rms_norm`` rounded to the products' dtype."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ctrlpost.embed.kernels import fused_norm


def unit_in_last_place(x: torch.Tensor) -> torch.Tensor:
    """The spacing of ``x``'s dtype at each of its values."""
    return torch.nextafter(x.abs(), torch.tensor(float("inf"), dtype=x.dtype)).float() - \
        x.abs().float()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("rows", "width"), [(9, 64), (1, 48), (6, 1024)])
def test_kernel_is_rms_norm_then_cast(interpreted: None, dtype: torch.dtype, rows: int,
                                      width: int) -> None:
    """Rows that do not fill the last program, widths that are not a power of two, a leading
    batch dimension. In float16 and bf16 each value is within one rounding step of the exact
    norm; in float32, within float32 tolerance of ``F.rms_norm``."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 1, width, generator=generator) * 5
    weight = torch.rand(width, generator=generator) + 0.5
    got = fused_norm.rms_norm_to(x, weight, 1e-6, dtype)
    assert got.dtype == dtype and got.shape == x.shape
    if dtype == torch.float32:
        torch.testing.assert_close(got, F.rms_norm(x, (width,), weight, 1e-6))
        return
    exact = F.rms_norm(x.double(), (width,), weight.double(), 1e-6)
    assert bool(((got.double() - exact).abs() <= unit_in_last_place(got).double()).all())


def test_kernel_takes_no_rows_and_refuses_what_it_cannot_read(interpreted: None) -> None:
    weight = torch.ones(8)
    assert fused_norm.rms_norm_to(torch.empty(0, 8), weight, 1e-6, torch.float16).shape == (0, 8)
    with pytest.raises(ValueError, match="float32"):
        fused_norm.rms_norm_to(torch.ones(4, 8, dtype=torch.float16), weight, 1e-6,
                               torch.float16)
    with pytest.raises(ValueError, match="contiguous"):
        fused_norm.rms_norm_to(torch.ones(8, 4).t(), torch.ones(4), 1e-6, torch.float16)


@pytest.mark.gpu
def test_compiled_kernel_on_the_gpu() -> None:
    """On CUDA, at T5-11B's width and a token count that is no multiple of anything."""
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device (run them with `nox -s gpu` on one)")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8163, 1024, generator=generator) * 3
    weight = torch.rand(1024, generator=generator) + 0.5
    exact = F.rms_norm(x.double(), (1024,), weight.double(), 1e-6)
    for dtype in (torch.float16, torch.bfloat16):
        got = fused_norm.rms_norm_to(x.cuda(), weight.cuda(), 1e-6, dtype).cpu()
        assert bool(((got.double() - exact).abs() <= unit_in_last_place(got).double()).all())
