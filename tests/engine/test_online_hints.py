"""The online-hint stage: a modality's model run on the rank, on the clip's own pixels of each
fitted sample, padded back as the loader pads; training batches filled one ahead without
moving the data position a checkpoint records."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctrlpost.data import buckets, video
from ctrlpost.engine.online_hints import FilledBatches, OnlineHints
from ctrlpost.modalities import OnlineHint

LOADED: list[tuple[dict[str, Path], str, Any]] = []


def _load(folders: Mapping[str, Path], device: str, params: Any) -> str:
    LOADED.append((dict(folders), device, params))
    return "model"


def _inverted(model: str, frames_T_H_W_C: np.ndarray, params: Any) -> np.ndarray:
    """A hint that depends on every pixel and on the frame's exact size: the colours inverted,
    plus a ramp across the width."""
    assert model == "model"
    ramp = np.arange(frames_T_H_W_C.shape[2], dtype=np.uint8)[None, None, :, None]
    return (255 - frames_T_H_W_C) ^ ramp


HINT = OnlineHint(models=("org/net",), load=_load, render=_inverted, selected=lambda p: True)


def stage(tmp_path: Path) -> OnlineHints:
    return OnlineHints(HINT, {"p": 1}, weights_dir=tmp_path, device=torch.device("cpu"))


def test_the_models_load_once_from_weights_dir(tmp_path: Path) -> None:
    LOADED.clear()
    stage(tmp_path)
    expected = [({"org/net": tmp_path / "org/net"}, "cpu", {"p": 1})]
    assert expected == LOADED


def test_a_padded_sample_gets_the_hint_of_its_own_pixels_padded_like_the_loader(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 90, 224, 3), dtype=np.uint8)  # wide: padded top and bottom
    fit = buckets.fit("128", 224, 90)
    assert fit.pad_top + fit.pad_bottom > 0 and not fit.resized
    sample = {"video": video.fit_frames(frames, fit), "padding_mask": video.padding_mask(fit),
              "hint": torch.empty((3, 0, 0, 0), dtype=torch.uint8), "name": "clip"}
    filled = stage(tmp_path).fill(sample)
    assert torch.equal(filled["hint"], video.fit_frames(_inverted("model", frames, None), fit))
    assert filled["name"] == "clip" and filled["video"] is sample["video"]
    batch = {k: torch.stack([v, v]) if isinstance(v, torch.Tensor) else v
             for k, v in sample.items()}
    assert torch.equal(stage(tmp_path).fill_batch(batch)["hint"],
                       torch.stack([filled["hint"], filled["hint"]]))


def test_padding_of_reads_back_every_side() -> None:
    for width, height in [(100, 40), (40, 100), (224, 128), (120, 40)]:
        fit = buckets.fit("128", width, height)
        assert video.padding_of(video.padding_mask(fit)) == video.Padding(
            fit.pad_left, fit.pad_right, fit.pad_top, fit.pad_bottom)


class CountingBatches:
    """A loader's interface: batches, and the position after the last one handed out."""

    def __init__(self, count: int) -> None:
        self.count, self.consumed = count, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in range(self.count):
            self.consumed = index + 1
            fit = buckets.fit("128", 64, 64)
            frames = np.full((1, 64, 64, 3), index, dtype=np.uint8)
            yield {"video": video.fit_frames(frames, fit)[None],
                   "padding_mask": video.padding_mask(fit)[None], "index": index}

    def state_dict(self) -> dict[str, int]:
        return {"epoch": 0, "consumed": self.consumed}


def test_batches_are_filled_ahead_but_the_position_is_the_trainers(tmp_path: Path) -> None:
    loader = CountingBatches(4)
    filled = FilledBatches(loader, stage(tmp_path))
    assert filled.state_dict() == {"epoch": 0, "consumed": 0}
    seen = []
    for batch in filled:
        seen.append(batch["index"])
        # the next batch is already being filled, yet a checkpoint now resumes after this one
        assert filled.state_dict() == {"epoch": 0, "consumed": batch["index"] + 1}
        assert int(batch["hint"][0, 0, 0, 0, 0]) == 255 - batch["index"]
    assert seen == [0, 1, 2, 3] and loader.consumed == 4
