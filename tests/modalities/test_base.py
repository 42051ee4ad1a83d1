"""``ExactOn``: whether the library version in use is one on which hints equal the reference's."""

from __future__ import annotations

import numpy as np
import pytest

from ctrlpost.cli.views.modalities import print_exactness
from ctrlpost.modalities import ExactOn, Modality
from ctrlpost.modalities.registry import exactness
from ctrlpost_blur import BlurParams


def test_version_in_and_out_of_range_and_missing_module() -> None:
    inside = ExactOn("NumPy", "numpy", f"=={np.__version__}")
    outside = ExactOn("NumPy", "numpy", "<1", why="another reduction order")
    missing = ExactOn("Nothing", "ctrlpost_no_such_module", ">=1")
    assert (inside.installed_version(), inside.holds()) == (np.__version__, True)
    assert (outside.installed_version(), outside.holds()) == (np.__version__, False)
    assert (missing.installed_version(), missing.holds()) == (None, None)


def test_not_exact_is_said_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    modality = Modality(
        name="fake", summary="", params_model=BlurParams, build_generator=lambda p: p,
        exact_on=(ExactOn("NumPy", "numpy", "<1", why="another reduction order"),
                  ExactOn("Nothing", "ctrlpost_no_such_module", ">=1")),
    )
    print_exactness(exactness(modality))
    out = " ".join(capsys.readouterr().out.split())
    assert (f"on NumPy <1; NumPy {np.__version__} in use: not exact (another reduction order)"
            in out)
    assert "Nothing (ctrlpost_no_such_module) is not installed" in out
    print_exactness([])
    assert "no byte-for-byte claim" in capsys.readouterr().out
