"""The training dataset: sample contents, determinism, hints as the plugin makes them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ctrlpost.data import buckets, video
from ctrlpost.data.dataset import BadSampleError, ClipDataset, SampleKey, build_dataset
from ctrlpost.modalities import registry, sample_rng
from ctrlpost.recipe import ControlSection, DataSection

from .conftest import frame_index, write_clip, write_pickle


def dataset_of(root: Path, *, modality: str = "edge", num_frames: int = 8,
               seed: int = 3) -> ClipDataset:
    data = DataSection(root=str(root), num_frames=num_frames, resolution="128")
    return build_dataset(data, ControlSection(modality=modality), seed=seed, text_dim=16)


def test_sample_contents(make_dataset: Callable[..., Path]) -> None:
    ds = dataset_of(make_dataset(["a", "b"]))
    assert len(ds) == 2 and ds.names == ["a", "b"]
    sample = ds[SampleKey(epoch=0, clip=1, position=0, next_epoch=0, next_consumed=1)]
    assert sample["video"].shape == sample["hint"].shape == (3, 8, 128, 224)
    assert sample["video"].dtype == sample["hint"].dtype == torch.uint8
    assert sample["hint_key"] == "control_input_edge"
    assert sample["t5"].shape == (512, 16) and sample["t5"].dtype == torch.float32
    assert sample["t5_length"] == 6 and not sample["t5"][6:].any()
    assert sample["padding_mask"].shape == (1, 128, 224)
    assert sample["padding_mask"].sum().item() == 2 * 224
    assert sample["image_size"].tolist() == [128.0, 224.0, 126.0, 224.0]
    assert (sample["name"], sample["index"], sample["fps"], sample["bucket"]) == (
        "b", 1, 24.0, "16:9")
    assert 0 <= sample["frame_start"] <= 24 - 8
    assert set(sample["hint_draw"]) == {"preset", "lower", "upper"}


def test_samples_are_a_function_of_seed_epoch_index(make_dataset: Callable[..., Path]) -> None:
    root = make_dataset(["a", "b", "c"])
    first, again = dataset_of(root), dataset_of(root)
    for index in range(3):
        s1, s2 = first.load(index, epoch=2), again.load(index, epoch=2)
        assert torch.equal(s1["video"], s2["video"]) and torch.equal(s1["hint"], s2["hint"])
        assert s1["hint_draw"] == s2["hint_draw"] and s1["frame_start"] == s2["frame_start"]
    draws = {(e, dataset_of(root, seed=s).load(0, epoch=e)["frame_start"],
              str(dataset_of(root, seed=s).load(0, epoch=e)["hint_draw"]))
             for e in range(3) for s in (3, 4)}
    assert len({d[1:] for d in draws}) > 1  # epochs and seeds give other starts or thresholds


@pytest.mark.parametrize("modality", ["edge", "blur"])
def test_hint_is_the_plugins_own_draw_and_render(make_dataset: Callable[..., Path],
                                                  modality: str) -> None:
    root = make_dataset(["a"], frames=20)
    sample = dataset_of(root, modality=modality, num_frames=6).load(0, epoch=5)
    rng = sample_rng(3, 5, 0)
    start = int(rng.integers(0, 20 - 6, endpoint=True))
    plugin = registry.get_modality(modality)
    generator = plugin.build_generator(plugin.validate_params({}))
    drawn = generator.draw(rng)
    frames, _ = video.read_clip(root / "videos" / "a.mp4", start, 6)
    assert [frame_index(f) for f in frames] == list(range(start, start + 6))
    fit = buckets.fit("128", 128, 72)
    want_hint = video.fit_frames(generator.render(frames, drawn), fit)
    assert sample["frame_start"] == start and sample["hint_draw"] == drawn
    assert torch.equal(sample["hint"], want_hint)
    assert torch.equal(sample["video"], video.fit_frames(frames, fit))


def test_large_frames_get_their_hint_from_shrunk_frames(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_clip(root / "videos" / "big.mp4", 4, 480, 272)  # larger than the 448x256 box of "256"
    write_pickle(root / "t5_xxl" / "big.pickle", [np.ones((3, 16), np.float16)])
    data = DataSection(root=str(root), num_frames=2, resolution="256")
    sample = build_dataset(data, ControlSection(modality="edge"), seed=0).load(0, epoch=0)
    fit = buckets.fit("256", 480, 272)
    assert fit.shrinks and (fit.scaled_width, fit.scaled_height) == (448, 254)
    frames, _ = video.read_clip(root / "videos" / "big.mp4", sample["frame_start"], 2)
    generator = registry.get_modality("edge").build_generator(
        registry.get_modality("edge").validate_params({}))
    hint = generator.render(video.shrink_for_hint(frames, fit), sample["hint_draw"])
    assert torch.equal(sample["hint"], video.fit_frames(hint, fit))


def test_bad_samples_raise_typed_errors(make_dataset: Callable[..., Path]) -> None:
    root = make_dataset(["good", "short", "noemb", "broken"])
    write_clip(root / "videos" / "short.mp4", 5)
    (root / "t5_xxl" / "noemb.pickle").unlink()
    (root / "videos" / "broken.mp4").write_bytes(b"\x00" * 100)
    ds = dataset_of(root)
    ds.load(ds.names.index("good"), epoch=0)
    reasons = {}
    for name in ("short", "noemb", "broken"):
        with pytest.raises(BadSampleError) as info:
            ds.load(ds.names.index(name), epoch=0)
        reasons[info.value.path.name] = info.value.reason
    assert reasons["short.mp4"] == "5 frames, fewer than num_frames=8"
    assert reasons["noemb.pickle"].startswith("missing T5 embedding")
    assert reasons["broken.mp4"].startswith("cannot open video")


def test_empty_dataset_names_the_next_command(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no clips") as info:
        dataset_of(tmp_path)
    assert "fetch-data" in (getattr(info.value, "hint", "") or "")
