"""Decoding exactness, bucket choice, and the resize + reflection-pad geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctrlpost.data import buckets, video
from ctrlpost.errors import DataError

from .conftest import clip_frames, frame_index, write_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("v") / "clip.mp4", 40, 160, 96, fps=30)


def test_decode_is_exact_and_respects_start(clip: Path) -> None:
    frames, info = video.read_clip(clip, 13, 9)
    assert info == video.VideoInfo(frames=40, fps=30.0, width=160, height=96)
    assert frames.shape == (9, 96, 160, 3) and frames.dtype == np.uint8
    assert [frame_index(f) for f in frames] == list(range(13, 22))
    # RGB order and content: close to what was written (mp4v is lossy)
    want = clip_frames(9, 160, 96, first=13)
    assert np.abs(frames.astype(int) - want.astype(int)).mean() < 6


def test_sequential_fallback_when_the_seek_lands_wrong(clip: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video.VideoReader, "_seek", lambda self, index: False)
    with video.VideoReader(clip) as reader:
        assert [frame_index(f) for f in reader.read(30, 10)] == list(range(30, 40))
        assert reader.frame_count() == 40
        assert frame_index(reader.read_one(0)) == 0  # back to the start after reading


def test_reads_in_any_order(clip: Path) -> None:
    with video.VideoReader(clip) as reader:
        order = [5, 0, 39, 12, 0]
        assert [frame_index(reader.read_one(k)) for k in order] == order


def test_reading_past_the_end_and_unreadable_files(clip: Path, tmp_path: Path) -> None:
    with pytest.raises(video.VideoError, match="cannot decode frame 40"):
        video.read_clip(clip, 35, 6)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(DataError, match="cannot open video"):
        video.read_clip(tmp_path / "empty.mp4", 0, 1)


@pytest.mark.parametrize(
    ("size", "bucket"),
    [((1280, 720), "16:9"), ((1920, 1080), "16:9"), ((640, 480), "4:3"), ((720, 720), "1:1"),
     ((1080, 1920), "9:16"), ((720, 960), "3:4"), ((2560, 1080), "16:9"), ((1000, 800), "4:3")],
)
def test_nearest_bucket(size: tuple[int, int], bucket: str) -> None:
    assert buckets.nearest_bucket(*size) == bucket


def test_every_family_is_multiple_of_16_with_the_reference_720() -> None:
    assert buckets.FAMILIES["720"] == {"16:9": (1280, 704), "4:3": (960, 704), "1:1": (960, 960),
                                       "3:4": (704, 960), "9:16": (704, 1280)}
    for family in buckets.FAMILIES.values():
        assert list(family) == list(buckets.ASPECT_RATIOS)
        for width, height in family.values():
            assert width % 16 == 0 and height % 16 == 0
    with pytest.raises(DataError, match="unknown resolution family"):
        buckets.fit("1080", 1920, 1080)


def test_720p_source_is_resized_to_1252x704_and_reflected_14px() -> None:
    fit = buckets.fit("720", 1280, 720)
    assert (fit.scaled_width, fit.scaled_height) == (1252, 704)
    assert (fit.pad_left, fit.pad_right, fit.pad_top, fit.pad_bottom) == (14, 14, 0, 0)
    assert fit.image_size == [704.0, 1280.0, 704.0, 1252.0]
    mask = video.padding_mask(fit)
    assert mask.shape == (1, 704, 1280) and mask.sum().item() == 28 * 704
    assert mask[0, :, :14].all() and mask[0, :, -14:].all() and not mask[0, :, 14:-14].any()


def test_fit_frames_geometry_on_a_small_clip() -> None:
    frames = clip_frames(3, 128, 72)  # the CPU demo's size, upscaled into 224x128
    fit = buckets.fit("128", 128, 72)
    assert (fit.scaled_width, fit.scaled_height, fit.pad_top, fit.pad_bottom) == (224, 126, 1, 1)
    out = video.fit_frames(frames, fit, chunk_frames=2)
    assert out.shape == (3, 3, 128, 224) and out.dtype == torch.uint8
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    want = F.interpolate(x, size=(126, 224), mode="bicubic", antialias=True)
    want = want.clamp(0, 255).round().to(torch.uint8).permute(1, 0, 2, 3)
    assert torch.equal(out[:, :, 1:127], want)
    # reflect: padded row 0 mirrors content row 1 (row 1 of the output is content row 0)
    assert torch.equal(out[:, :, 0], out[:, :, 2]) and torch.equal(out[:, :, 127], out[:, :, 125])
    assert video.padding_mask(fit).sum().item() == 2 * 224


def test_no_resize_when_already_the_fitted_size_and_edge_mode_for_huge_pads() -> None:
    frames = clip_frames(2, 176, 128)
    fit = buckets.fit("128", 176, 128)
    assert not fit.resized and fit.pad_left == 0
    assert torch.equal(video.fit_frames(frames, fit),
                       torch.from_numpy(frames).permute(3, 0, 1, 2))
    thin = np.arange(2 * 128 * 4 * 3, dtype=np.uint8).reshape(2, 128, 4, 3)  # 4 px wide, 1:1
    fit = buckets.fit("128", 4, 128)
    out = video.fit_frames(thin, fit)
    assert fit.bucket == "9:16" and out.shape == (3, 2, 224, 128)
    left = fit.pad_left
    assert left >= fit.scaled_width  # reflect impossible: replicate the border column
    assert torch.equal(out[..., 0], out[..., left])


def test_shrink_for_hint_only_when_larger_than_the_box() -> None:
    big = clip_frames(2, 1280, 720)
    fit = buckets.fit("720", 1280, 720)
    assert video.shrink_for_hint(big, fit).shape == (2, 704, 1252, 3)
    small = clip_frames(2, 128, 72)
    assert video.shrink_for_hint(small, buckets.fit("128", 128, 72)) is small
