"""A rank's CUDA allocator grows segments in place (expandable segments) unless the user chose
another setting: the memory "auto" checkpointing plans for is not lost to fragmentation."""

from __future__ import annotations

import os

import pytest

from ctrlpost.engine import runtime


def test_a_rank_sets_expandable_segments_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    runtime.allocator_defaults()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"


def test_the_users_allocator_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    runtime.allocator_defaults()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:512"


def test_joining_the_job_applies_it_before_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    for name in ("MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    joined = runtime.init_distributed("gloo")
    try:
        assert joined.device.type == "cpu"
        assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    finally:
        dist.destroy_process_group()
