"""The rank-0 logger without the `tensorboard` extra: one error naming the key and the fix,
raised before any log file is opened (`verify` and `train` report it earlier still)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ctrlpost.engine.metrics import RunLogger
from ctrlpost.errors import CtrlpostError


def test_logger_without_tensorboard_fails_before_writing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(CtrlpostError) as raised:
        RunLogger(tmp_path, enabled=True, total_steps=2, every_steps=1, jsonl=True,
                  tensorboard=True, device=torch.device("cpu"))
    assert str(raised.value) == ("logging.tensorboard = true needs tensorboard: pip install "
                                 "'ctrlpost[tensorboard]' or set logging.tensorboard = false")
    assert list(tmp_path.iterdir()) == []  # no metrics.jsonl, no tb/
    logger = RunLogger(tmp_path, enabled=True, total_steps=2, every_steps=1, jsonl=True,
                       tensorboard=False, device=torch.device("cpu"))
    logger.close()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
