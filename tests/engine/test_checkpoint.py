from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctrlpost.engine import checkpoint
from ctrlpost.errors import LaunchError


def make_step(root: Path, step: int, *, complete: bool = True) -> Path:
    path = checkpoint.step_dir(root, step)
    path.mkdir(parents=True)
    if complete:
        (path / checkpoint.META).write_text(json.dumps({"step": step}))
    for suffix in ("_reg_model.pt", "_ema_model.pt", ".json"):
        (root / f"iter_{step:09d}{suffix}").write_text("x")
    return path


def test_only_committed_checkpoints_count(tmp_path: Path) -> None:
    make_step(tmp_path, 10)
    make_step(tmp_path, 20)
    make_step(tmp_path, 30, complete=False)  # killed before meta.json: never resumed from
    (tmp_path / ".step_000000040.tmp").mkdir()
    assert [s for s, _ in checkpoint.complete_checkpoints(tmp_path)] == [10, 20]
    assert checkpoint.resolve_resume(tmp_path, "auto") == checkpoint.step_dir(tmp_path, 20)
    assert checkpoint.resolve_resume(tmp_path, "never") is None
    assert checkpoint.resolve_resume(tmp_path / "none", "auto") is None
    explicit = checkpoint.step_dir(tmp_path, 10)
    assert checkpoint.resolve_resume(tmp_path, str(explicit)) == explicit
    with pytest.raises(LaunchError, match="not a complete checkpoint"):
        checkpoint.resolve_resume(tmp_path, str(checkpoint.step_dir(tmp_path, 30)))
    checkpoint.remove_leftovers(tmp_path, tmp_path)
    assert not (tmp_path / ".step_000000040.tmp").exists()


def test_prune_keeps_the_newest_and_their_exports(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        make_step(tmp_path, step)
    assert checkpoint.prune(tmp_path, keep_last=2) == [1]
    assert [s for s, _ in checkpoint.complete_checkpoints(tmp_path)] == [2, 3]
    assert not (tmp_path / "iter_000000001_ema_model.pt").exists()
    assert (tmp_path / "iter_000000002_ema_model.pt").exists()
