"""The ``depth`` plugin: the lossless writer, the windowed reader, the file check and the
pass-through hint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

import ctrlpost_depth
from ctrlpost.modalities import ClipInfo, ClipWindow, HintFileError
from ctrlpost_depth import (
    DEPTH,
    DepthParams,
    build_generator,
    check_depth,
    depth_levels,
    read_depth,
    synthesize_depth,
    write_depth_video,
)


def disparity_clip(T: int = 9, H: int = 37, W: int = 50) -> np.ndarray:
    """float32 [T, H, W] relative inverse depth of a tilted plane and a moving box (near =
    large), with a fine ripple so that neighbouring pixels differ by a level or so."""
    t = np.arange(T)[:, None, None]
    y = np.arange(H)[None, :, None]
    x = np.arange(W)[None, None, :]
    plane = 1.0 + 0.05 * y + 0.01 * x + 0.02 * t + 0.004 * ((3 * x + 7 * y + t) % 11)
    box = (y >= 8 + t) & (y < 20 + t) & (x >= 10 + 2 * t) & (x < 26 + 2 * t)
    return np.where(box, 4.5 - 0.01 * x, plane).astype(np.float32)


def clip_info(T: int, H: int, W: int) -> ClipInfo:
    return ClipInfo(name="clip", frame_count=T, width=W, height=H, fps=24.0)


def decode_all(path: Path) -> np.ndarray:
    """Every frame of ``path``, decoded sequentially by OpenCV, as RGB (independent of
    ``read_depth``: no seek, no preallocated output)."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return np.stack(frames)


@pytest.fixture
def depth_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    levels = depth_levels(disparity_clip())
    return write_depth_video(tmp_path / "depth" / "clip.mp4", levels), levels


# -- levels ---------------------------------------------------------------------------------


def test_levels_are_one_min_max_over_the_clip_near_bright() -> None:
    depth = disparity_clip()
    levels = depth_levels(depth)
    assert levels.dtype == np.uint8 and levels.shape == depth.shape
    assert levels.min() == 0 and levels.max() == 255
    assert levels[depth == depth.max()].min() == 255 and levels[depth == depth.min()].max() == 0
    # one range for the whole clip: a frame's own extremes are not stretched to 0 and 255
    assert any(frame.min() > 0 or frame.max() < 255 for frame in levels)
    expected = ((depth - depth.min()) / (depth.max() - depth.min()) * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(levels, expected)


def test_float16_levels_equal_the_reference_producers() -> None:
    # The reference's producer normalises its float16 predictions as (d - min) /
    # (max - min + 1e-8) * 255 and truncates; the 1e-8 vanishes in float16.
    depth16 = (disparity_clip() * 3.1).astype(np.float16)
    reference = ((depth16 - depth16.min()) / (depth16.max() - depth16.min() + 1e-8)
                 * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(depth_levels(depth16), reference)
    assert reference.max() == 255
    # in float64 the 1e-8 would keep the maximum at 254; the writer maps it to 255
    depth64 = depth16.astype(np.float64)
    assert ((depth64 - depth64.min()) / (depth64.max() - depth64.min() + 1e-8)
            * 255.0).astype(np.uint8).max() == 254
    assert depth_levels(depth64).max() == 255


def test_levels_of_metric_depth_and_of_uint8_maps() -> None:
    depth = disparity_clip()
    far_is_large = 10.0 - depth
    np.testing.assert_array_equal(depth_levels(far_is_large, near_is_large=False),
                                  depth_levels(-far_is_large))
    grey = depth_levels(depth)
    np.testing.assert_array_equal(depth_levels(grey), grey)
    np.testing.assert_array_equal(depth_levels(grey, near_is_large=False), 255 - grey)
    np.testing.assert_array_equal(depth_levels(np.full((2, 3, 4), 7.5)), np.zeros((2, 3, 4)))


@pytest.mark.parametrize(("bad", "match"), [
    (np.zeros((4, 5), np.float32), r"\[T, H, W\]"),
    (np.zeros((2, 4, 5), np.uint16), "uint8 levels or floating"),
    (np.full((2, 4, 5), np.nan, np.float32), "NaN"),
])
def test_levels_reject_bad_maps(bad: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        depth_levels(bad)


# -- writer ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("T", "H", "W"), [(9, 37, 50), (5, 72, 128), (3, 33, 61)])
def test_writer_round_trip_is_exact(tmp_path: Path, T: int, H: int, W: int) -> None:
    # Lossless H.264 in the gray format: OpenCV decodes every pixel to the written level, in
    # all three channels (error bound 0, odd sizes included).
    levels = depth_levels(disparity_clip(T, H, W))
    path = write_depth_video(tmp_path / "d.mp4", disparity_clip(T, H, W), fps=30.0)
    decoded = decode_all(path)
    assert decoded.shape == (T, H, W, 3)
    np.testing.assert_array_equal(decoded, np.repeat(levels[..., None], 3, axis=-1))
    capture = cv2.VideoCapture(str(path))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(30.0)
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == T
    capture.release()
    assert [p.name for p in tmp_path.iterdir()] == ["d.mp4"]  # no temporary left behind


def test_writer_keeps_every_level(tmp_path: Path) -> None:
    levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16).repeat(3, axis=0)
    levels[1] = levels[1].T
    levels[2] = 255 - levels[0]
    path = write_depth_video(tmp_path / "d.mp4", levels)
    np.testing.assert_array_equal(decode_all(path), np.repeat(levels[..., None], 3, axis=-1))


def test_writer_rejects_nothing_to_write(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no depth frames"):
        write_depth_video(tmp_path / "d.mp4", np.zeros((0, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="fps"):
        write_depth_video(tmp_path / "d.mp4", np.zeros((1, 4, 4), np.uint8), fps=0)
    assert list(tmp_path.iterdir()) == []


# -- reader ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("start", "count"), [(0, 9), (0, 1), (3, 5), (8, 1)])
def test_read_returns_the_windows_decoded_frames(depth_file: tuple[Path, np.ndarray],
                                                 start: int, count: int) -> None:
    path, levels = depth_file
    window = ClipWindow(clip=clip_info(9, 37, 50), start=start, num_frames=count)
    frames = read_depth(path, window)
    assert frames.dtype == np.uint8 and frames.shape == (count, 37, 50, 3)
    np.testing.assert_array_equal(frames, decode_all(path)[start:start + count])
    np.testing.assert_array_equal(frames[..., 1], levels[start:start + count])


def test_read_names_a_short_video(depth_file: tuple[Path, np.ndarray]) -> None:
    path, _ = depth_file
    window = ClipWindow(clip=clip_info(12, 37, 50), start=4, num_frames=6)
    with pytest.raises(HintFileError, match=r"has 9 frames, the sample needs frames 4\.\.9$"):
        read_depth(path, window)


def test_read_names_a_wrong_size(depth_file: tuple[Path, np.ndarray]) -> None:
    path, _ = depth_file
    with pytest.raises(HintFileError, match="depth frames are 50×37, the clip is 64×36"):
        read_depth(path, ClipWindow(clip=clip_info(9, 36, 64), start=0, num_frames=2))


def test_read_names_an_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"not a video at all" * 100)
    with pytest.raises(HintFileError, match="cannot open the depth video"):
        read_depth(path, ClipWindow(clip=clip_info(9, 37, 50), start=0, num_frames=1))


# -- check ----------------------------------------------------------------------------------


def test_check_accepts_a_matching_file(depth_file: tuple[Path, np.ndarray]) -> None:
    path, _ = depth_file
    assert check_depth(path, clip_info(9, 37, 50)) is None
    assert check_depth(path, clip_info(7, 37, 50)) is None  # longer than the clip is fine


def test_check_names_a_short_file(depth_file: tuple[Path, np.ndarray]) -> None:
    path, _ = depth_file
    assert check_depth(path, clip_info(121, 37, 50)) == (
        "depth video has 9 frames, fewer than the clip's 121; "
        "remake it frame-aligned with the clip")


def test_check_names_a_wrong_size(depth_file: tuple[Path, np.ndarray]) -> None:
    path, _ = depth_file
    assert check_depth(path, clip_info(9, 36, 64)) == (
        "depth video is 50×37, the clip is 64×36 (width×height); "
        "remake it frame-aligned with the clip")
    both = check_depth(path, clip_info(10, 37, 51))
    assert both is not None
    assert "has 9 frames, fewer than the clip's 10 and is 50×37, the clip is 51×37" in both


def test_check_names_an_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\x00" * 1000)
    assert check_depth(path, clip_info(9, 37, 50)) == (
        "cannot be opened as a video (unreadable or truncated)")


# -- the hint -------------------------------------------------------------------------------


def test_hint_is_the_decoded_frames_unchanged(depth_file: tuple[Path, np.ndarray]) -> None:
    path, _ = depth_file
    window = ClipWindow(clip=clip_info(9, 37, 50), start=2, num_frames=6)
    source = DEPTH.hint_file.read(path, window)  # type: ignore[union-attr]
    generator = build_generator(DepthParams())
    rng = np.random.default_rng(3)
    drawn = generator.draw(rng, source)
    assert drawn == {}
    assert rng.random() == np.random.default_rng(3).random(), "the draw consumed randomness"
    rgb = np.zeros((6, 37, 50, 3), np.uint8)
    hint = generator.render(rgb, drawn, source)
    assert hint.dtype == np.uint8 and hint.shape == (6, 37, 50, 3)
    np.testing.assert_array_equal(hint, decode_all(path)[2:8])


def test_render_rejects_depth_that_does_not_line_up() -> None:
    generator = build_generator(DepthParams())
    source = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(HintFileError, match="do not line up"):
        generator.render(np.zeros((5, 8, 8, 3), np.uint8), {}, source)
    with pytest.raises(HintFileError, match="uint8 RGB"):
        generator.render(np.zeros((4, 8, 8, 3), np.uint8), {}, source[..., 0])


def test_modality_descriptor(tmp_path: Path) -> None:
    assert DEPTH.name == "depth" and DEPTH.hint_key == "control_input_depth"
    assert DEPTH.hint_channels == 3 and not DEPTH.replaces_video
    assert DEPTH.released_control_file == "depth_control.pt"
    assert ctrlpost_depth.ctrlpost_register_modalities() == [DEPTH]
    hint_file = DEPTH.hint_file
    assert hint_file is not None
    assert (hint_file.folder, hint_file.suffix) == ("depth", ".mp4")
    assert hint_file.made_by == "ctrlpost annotate RECIPE"
    assert hint_file.annotator is ctrlpost_depth.ANNOTATOR
    assert hint_file.path(tmp_path, "a") == tmp_path / "depth" / "a.mp4"
    assert isinstance(DEPTH.validate_params({}), DepthParams)
    with pytest.raises(ValidationError, match="extra"):
        DEPTH.validate_params({"invert": True})


def test_import_loads_neither_torch_nor_cv2() -> None:
    code = "import ctrlpost_depth, sys; print('torch' in sys.modules, 'cv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# -- synthesize: a pseudo depth video for a synthetic clip ----------------------------------


def shape_clip(T: int = 24, H: int = 48, W: int = 64, pan: int = 0,
               shape: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 [T, H, W, 3] frames as the synthetic source draws them (a flat red square
    moving right and down over blue diagonal stripes with grain; the camera panning ``pan``
    pixels a frame; no square when not ``shape``) and the square's boolean masks [T, H, W]."""
    rng = np.random.default_rng(7)
    canvas_W = W + pan * T
    y, x = np.mgrid[0:H, 0:canvas_W]
    shade = np.where(((x + y) // 5) % 2 == 0, 1.0, 0.45)[..., None]
    grain = rng.normal(0.0, 4.0, size=(H, canvas_W, 1))
    canvas = np.clip(np.array([30, 90, 220]) * shade + grain, 0, 255).astype(np.uint8)
    frames = np.stack([canvas[:, pan * t:pan * t + W] for t in range(T)])
    squares = np.zeros((T, H, W), dtype=bool)
    for t in range(T):
        squares[t, 8 + t // 2:22 + t // 2, 4 + 2 * t:18 + 2 * t] = shape
    frames[squares] = (220, 40, 40)
    return frames, squares


@pytest.mark.parametrize("pan", [0, 2])
def test_foreground_masks_find_the_moving_shape(pan: int) -> None:
    from ctrlpost.modalities.foreground import foreground_masks

    frames, squares = shape_clip(pan=pan)
    masks = foreground_masks(frames)
    assert masks.dtype == bool and masks.shape == squares.shape
    assert (masks & squares).sum() / (masks | squares).sum() > 0.95
    # no compact colour (stripes only): no foreground at all
    assert not foreground_masks(shape_clip(pan=pan, shape=False)[0]).any()
    # a shape that enters the frame late is found where it is
    late = foreground_masks(frames[:, :, 30:])
    assert not late[:6].any() and late[8:].any()
    assert (late & squares[:, :, 30:]).sum() / (late | squares[:, :, 30:]).sum() > 0.95
    with pytest.raises(ValueError, match=r"RGB uint8 \[T, H, W, 3\]"):
        foreground_masks(frames[..., 0])


@pytest.mark.parametrize("pan", [0, 2])
def test_synthesize_writes_a_depth_video_the_clip_can_use(tmp_path: Path, pan: int) -> None:
    frames, squares = shape_clip(pan=pan)
    T, H, W, _ = frames.shape
    path = tmp_path / "depth" / "clip.mp4"
    assert DEPTH.hint_file is not None and DEPTH.hint_file.synthesize is not None
    DEPTH.hint_file.synthesize(frames, 24.0, path)
    clip = clip_info(T, H, W)
    assert DEPTH.hint_file.check(path, clip) is None
    window = ClipWindow(clip=clip, start=5, num_frames=17)
    source = DEPTH.hint_file.read(path, window)
    generator = build_generator(DepthParams())
    hint = generator.render(frames[5:22], generator.draw(np.random.default_rng(0), source),
                            source)
    assert hint.shape == (17, H, W, 3) and hint.max() == 255
    grey = hint[..., 0].astype(np.float64)
    inside, outside = grey[squares[5:22]], grey[~squares[5:22]]
    assert inside.mean() > outside.mean() + 100  # the shape is near, the background far
    for t in range(17):  # in every frame
        assert grey[t][squares[5 + t]].mean() > grey[t][~squares[5 + t]].mean() + 100
    # the background recedes upwards: its lower rows are nearer than its upper ones
    background = np.where(squares[5:22], np.nan, grey)
    assert np.nanmean(background[:, -6:]) > np.nanmean(background[:, :6])


def test_synthesize_is_deterministic(tmp_path: Path) -> None:
    frames, _ = shape_clip(pan=2)
    synthesize_depth(frames, 24.0, tmp_path / "a.mp4")
    synthesize_depth(frames.copy(), 24.0, tmp_path / "b.mp4")
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4"]


def test_synthesize_of_a_clip_without_a_shape_writes_the_ground(tmp_path: Path) -> None:
    frames, _ = shape_clip(shape=False)
    synthesize_depth(frames, 30.0, tmp_path / "d.mp4")
    depth = decode_all(tmp_path / "d.mp4")
    assert depth.shape == frames.shape
    assert check_depth(tmp_path / "d.mp4", clip_info(*frames.shape[:3])) is None
    column = depth[0, :, 0, 0].astype(int)
    assert column[0] == 0 and column[-1] == 255 and (np.diff(column) >= 0).all()
