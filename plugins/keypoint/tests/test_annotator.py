"""The keypoint annotator, on tiny ONNX stand-ins for DWPose's detector and pose model.

Most tests use hand-made stand-ins (written with :mod:`ctrlpost_keypoint.onnx_graph`) that keep
the real models' interfaces (a raw YOLOX output ``[B, anchors, 85]`` on stride 8/16/32 grids;
SimCC outputs ``[B, 133, 2w]`` and ``[B, 133, 2h]``) with small inputs. Their outputs are fixed
tables plus one number computed from the image, so every box and keypoint is known in advance:

- detector: person boxes A, B (overlapping A, lower score), C and D (too low a score), each
  scoring ``factor * sigmoid((max of input channel 0 - 180) / 10)``: a frame with a bright
  blue pixel (channel 0 of the BGR input) has persons A and C, a dark one has nobody;
- pose: each keypoint's bins peak at fixed places; every bin is shifted by ``0.01 *`` the
  mean of the normalised crop's channel 0 (red), which lands in the confidences.

The last tests run the random stand-ins ``make_tiny`` writes for the tiny flavor.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ctrlpost.modalities import ClipInfo, ClipWindow
from ctrlpost.modalities.safe_pickle import load_pickle
from ctrlpost_keypoint import KEYPOINT, KEYPOINT_FILE, KeypointParams, check_keypoints
from ctrlpost_keypoint import onnx_graph as onnx
from ctrlpost_keypoint.annotator import (
    DETECTOR_FILE,
    DWPOSE_REPO,
    POSE_FILE,
    WholebodyModels,
    keypoints_per_frame,
    load_wholebody,
    persons_from_boxes,
)
from ctrlpost_keypoint.tiny_models import make_tiny


def channel_statistic(reduce: str) -> tuple[list[bytes], dict[str, np.ndarray], str]:
    """Nodes reducing the input's channel 0 to one number per image, shaped ``[B, 1, 1]``
    (``reduce``: ``"ReduceMax"`` or ``"ReduceMean"``), and the name of that output."""
    select = np.zeros((1, 3, 1, 1), np.float32)
    select[0, 0] = 1.0
    nodes = [onnx.node("Conv", ["input", "select"], ["channel0"]),
             onnx.node(reduce, ["channel0"], ["stat4"], axes=[1, 2, 3], keepdims=1),
             onnx.node("Reshape", ["stat4", "shape"], ["stat"])]
    return nodes, {"select": select, "shape": np.array([-1, 1, 1], np.int64)}, "stat"

DET_HW = (64, 64)
POSE_HW = (32, 24)
K, SPLIT = 133, 2
H, W = 48, 64  # frames fit the detector's input at scale 1 (rows 48..63 are padding)
ALPHA = 0.01

# (centre x, centre y, width, height) in detector-input pixels, and the score factor.
BOXES = {"A": ((20.0, 24.0, 16.0, 32.0), 1.0), "B": ((24.0, 26.0, 16.0, 32.0), 0.8),
         "C": ((48.0, 20.0, 12.0, 24.0), 0.6), "D": ((52.0, 44.0, 8.0, 8.0), 0.2)}


def xyxy(name: str) -> np.ndarray:
    (cx, cy, w, h), _ = BOXES[name]
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def detector_tables() -> tuple[np.ndarray, np.ndarray]:
    """``base`` and ``select`` ``[1, anchors, 85]``: output = base + score * select."""
    anchors = sum((DET_HW[0] // s) * (DET_HW[1] // s) for s in (8, 16, 32))
    base = np.zeros((1, anchors, 85), np.float32)
    select = np.zeros_like(base)
    for (cx, cy, w, h), factor in BOXES.values():
        gx, gy = int(cx // 8), int(cy // 8)  # all on the stride-8 grid (the first 8 x 8)
        anchor = gy * (DET_HW[1] // 8) + gx
        base[0, anchor, :4] = [cx / 8 - gx, cy / 8 - gy, math.log(w / 8), math.log(h / 8)]
        base[0, anchor, 5] = 1.0  # p(person)
        select[0, anchor, 4] = factor  # objectness
    return base, select


def peaks() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each keypoint's x and y peak bins and values; keypoint 132's bins are all -1."""
    k = np.arange(K)
    bins_x, bins_y = (5 + 7 * k) % (POSE_HW[1] * SPLIT), (3 + 11 * k) % (POSE_HW[0] * SPLIT)
    values_x = np.where(k < 17, 0.9, 0.5).astype(np.float32)
    values_y = np.full(K, 0.7, np.float32)
    return bins_x, bins_y, values_x, values_y


def pose_tables(num_keypoints: int = K) -> tuple[np.ndarray, np.ndarray]:
    bins_x, bins_y, values_x, values_y = peaks()
    simcc_x = np.zeros((1, K, POSE_HW[1] * SPLIT), np.float32)
    simcc_y = np.zeros((1, K, POSE_HW[0] * SPLIT), np.float32)
    simcc_x[0, np.arange(K), bins_x] = values_x
    simcc_y[0, np.arange(K), bins_y] = values_y
    simcc_x[0, K - 1], simcc_y[0, K - 1] = -1.0, -1.0
    return simcc_x[:, :num_keypoints], simcc_y[:, :num_keypoints]


def write_detector(path: Path, batch: int | str) -> None:
    nodes, inits, stat = channel_statistic("ReduceMax")
    base, select = detector_tables()
    inits |= {"centre": np.array([180.0], np.float32), "width": np.array([10.0], np.float32),
              "base": base, "sel": select}
    nodes += [onnx.node("Sub", [stat, "centre"], ["shifted"]),
              onnx.node("Div", ["shifted", "width"], ["logit"]),
              onnx.node("Sigmoid", ["logit"], ["score"]),
              onnx.node("Mul", ["score", "sel"], ["scored"]),
              onnx.node("Add", ["base", "scored"], ["output"])]
    anchors = base.shape[1]
    path.write_bytes(onnx.model(nodes, inits, [onnx.value_info("input", [batch, 3, *DET_HW])],
                                [onnx.value_info("output", [batch, anchors, 85])]))


def write_pose(path: Path, batch: int | str, num_keypoints: int = K) -> None:
    nodes, inits, stat = channel_statistic("ReduceMean")
    simcc_x, simcc_y = pose_tables(num_keypoints)
    inits |= {"alpha": np.array([ALPHA], np.float32), "base_x": simcc_x, "base_y": simcc_y}
    nodes += [onnx.node("Mul", [stat, "alpha"], ["shift"]),
              onnx.node("Add", ["base_x", "shift"], ["simcc_x"]),
              onnx.node("Add", ["base_y", "shift"], ["simcc_y"])]
    outputs = [onnx.value_info("simcc_x", [batch, num_keypoints, simcc_x.shape[2]]),
               onnx.value_info("simcc_y", [batch, num_keypoints, simcc_y.shape[2]])]
    path.write_bytes(onnx.model(nodes, inits, [onnx.value_info("input", [batch, 3, *POSE_HW])],
                                outputs))


def tiny_dwpose(folder: Path, batch: int | str = "batch", num_keypoints: int = K) -> Path:
    """A folder laid out like the fetched DWPose repo, holding the two stand-ins."""
    folder.mkdir(parents=True, exist_ok=True)
    write_detector(folder / DETECTOR_FILE, batch)
    write_pose(folder / POSE_FILE, batch, num_keypoints)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> WholebodyModels:
    folder = tiny_dwpose(tmp_path_factory.mktemp("weights") / DWPOSE_REPO)
    return load_wholebody({DWPOSE_REPO: folder}, "cpu", KeypointParams())


def clip(colours: list[tuple[int, int, int]], h: int = H, w: int = W) -> np.ndarray:
    """One uniform RGB frame per colour."""
    return np.stack([np.full((h, w, 3), c, np.uint8) for c in colours])


BRIGHT = (200, 60, 250)  # blue 250: persons; red 200: the pose shift
DARK = (0, 0, 0)


def expected_pose(box_4: np.ndarray, red: int) -> np.ndarray:
    """The stand-in pose model's keypoints ``[133, 3]`` (pixels) for a box in a frame whose
    red value is ``red`` everywhere the crop looks."""
    x1, y1, x2, y2 = box_4
    w, h = (x2 - x1) * 1.25, (y2 - y1) * 1.25
    aspect = POSE_HW[1] / POSE_HW[0]
    w, h = (w, w / aspect) if w > h * aspect else (h * aspect, h)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    shift = ALPHA * (red - 123.675) / 58.395
    bins_x, bins_y, values_x, values_y = peaks()
    scores = 0.5 * (values_x + values_y) + shift
    bins_x, bins_y = bins_x.astype(float), bins_y.astype(float)
    scores[K - 1] = -1.0 + shift
    bins_x[K - 1] = bins_y[K - 1] = -1.0
    xs = bins_x / SPLIT / POSE_HW[1] * w + cx - w / 2
    ys = bins_y / SPLIT / POSE_HW[0] * h + cy - h / 2
    return np.stack([xs, ys, scores], axis=1)


# --- the descriptor --------------------------------------------------------------------------

def test_keypoint_file_names_its_annotator_and_command() -> None:
    assert KEYPOINT.hint_file is KEYPOINT_FILE
    assert KEYPOINT_FILE.made_by == "ctrlpost annotate RECIPE"
    annotator = KEYPOINT_FILE.annotator
    assert annotator is not None and annotator.models == (DWPOSE_REPO,) == ("yzd-v/DWPose",)
    assert annotator.load is load_wholebody


# --- detection -------------------------------------------------------------------------------

def test_detection_keeps_persons_above_the_threshold_after_nms(models: WholebodyModels) -> None:
    from ctrlpost_keypoint.person_detector import detect_persons

    boxes = detect_persons(models.detector, clip([BRIGHT, DARK, BRIGHT]), batch_size=2)
    # B overlaps A (IoU 0.56) and scores lower; D scores 0.2: both dropped; best first
    np.testing.assert_allclose(boxes[0], np.stack([xyxy("A"), xyxy("C")]), atol=1e-4)
    assert boxes[1].shape == (0, 4)
    np.testing.assert_array_equal(boxes[2], boxes[0])
    only_a = detect_persons(models.detector, clip([BRIGHT]), 1, score_threshold=0.7)
    np.testing.assert_allclose(only_a[0], xyxy("A")[None], atol=1e-4)
    assert detect_persons(models.detector, clip([BRIGHT]), 1, score_threshold=0.9995)[0].size == 0
    with_b = detect_persons(models.detector, clip([BRIGHT]), 1, iou_threshold=0.6)
    np.testing.assert_allclose(with_b[0], np.stack([xyxy(n) for n in "ABC"]), atol=1e-4)


def test_detection_scales_boxes_back_from_the_letterbox(models: WholebodyModels) -> None:
    from ctrlpost_keypoint.person_detector import detect_persons

    frames = clip([BRIGHT], h=2 * H, w=2 * W)  # scaled by 0.5 into the 64 x 64 input
    boxes = detect_persons(models.detector, frames, batch_size=1)
    np.testing.assert_allclose(boxes[0], 2 * np.stack([xyxy("A"), xyxy("C")]), atol=1e-3)


def test_the_detector_sees_bgr(models: WholebodyModels) -> None:
    from ctrlpost_keypoint.person_detector import detect_persons

    boxes = detect_persons(models.detector, clip([(255, 0, 0), (0, 0, 255)]), batch_size=2)
    assert [len(b) for b in boxes] == [0, 2]  # the stand-in scores only channel 0: blue


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    from ctrlpost_keypoint.person_detector import nms

    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.0]])
    scores = np.array([0.5, 0.9, 0.4, 0.5])
    assert nms(boxes, scores, 0.45) == [1, 2]
    assert nms(boxes, scores, 1.0) == [1, 3, 0, 2]  # equal scores: the later box first


# --- pose ------------------------------------------------------------------------------------

def test_pose_of_given_boxes_is_decoded_through_the_crop(models: WholebodyModels) -> None:
    boxes = [np.stack([xyxy("A"), xyxy("C")]), np.zeros((0, 4))]
    frames = clip([BRIGHT, (50, 60, 250)])
    persons = persons_from_boxes(models, frames, boxes, batch_size=3)
    assert [len(p) for p in persons] == [2, 0]
    for body, name in zip(persons[0], "AC", strict=True):
        assert body.shape == (133, 3) and body.dtype == np.float32
        expected = expected_pose(xyxy(name), red=BRIGHT[0]) / np.array([W, H, 1.0])
        np.testing.assert_allclose(body, expected, atol=1e-5)
    # pinned: person A's nose (bins 5 and 3 of 48 and 64; region 30 x 40 around (20, 24))
    nose = [8.125 / W, 5.875 / H, 0.8 + 0.01 * 76.325 / 58.395]
    np.testing.assert_allclose(persons[0][0][0], nose, rtol=1e-6)


def test_the_pose_model_sees_normalised_rgb(models: WholebodyModels) -> None:
    box = [xyxy("A")[None]]
    for red in (50, 200):
        body = persons_from_boxes(models, clip([(red, 60, 250)]), box, 1)[0][0]
        np.testing.assert_allclose(body[0, 2], 0.8 + ALPHA * (red - 123.675) / 58.395,
                                   rtol=1e-6)


def test_pose_models_with_other_than_133_keypoints_are_refused(tmp_path: Path) -> None:
    folder = tiny_dwpose(tmp_path / DWPOSE_REPO, num_keypoints=17)
    with pytest.raises(ValueError, match=r"\[batch, 133, bins\].*COCO-WholeBody"):
        load_wholebody({DWPOSE_REPO: folder}, "cpu", KeypointParams())


# --- the whole clip --------------------------------------------------------------------------

def test_annotate_writes_every_frame_in_the_file_format(models: WholebodyModels,
                                                        tmp_path: Path) -> None:
    annotator = KEYPOINT_FILE.annotator
    assert annotator is not None
    frames = clip([BRIGHT, DARK, DARK, BRIGHT, BRIGHT])
    path = KEYPOINT_FILE.path(tmp_path, "clip")
    annotator.annotate(models, frames, 24.0, path, 2)
    info = ClipInfo(name="clip", frame_count=5, width=W, height=H, fps=24.0)
    assert check_keypoints(path, info) is None
    content = load_pickle(path)
    assert sorted(content) == [0, 1, 2, 3, 4]
    assert [len(content[t]) for t in range(5)] == [2, 0, 0, 2, 2]
    for person in content[0] + content[3] + content[4]:
        body, hand = person["body-keypoints"], person["hand-keypoints"]
        assert body.shape == (133, 3) and hand.shape == (42, 3) and body.dtype == np.float32
        np.testing.assert_array_equal(hand, body[91:133])
        assert (body[:, :2] >= 0).all() and (body[:, :2] <= 1).all()
    expected = expected_pose(xyxy("A"), BRIGHT[0]) / np.array([W, H, 1.0])
    np.testing.assert_allclose(content[3][0]["body-keypoints"], expected, atol=1e-5)
    # the hint reads it back and draws the two skeletons in the frames that have them
    source = KEYPOINT_FILE.read(path, ClipWindow(clip=info, start=0, num_frames=5))
    hint = KEYPOINT.build_generator(KeypointParams()).render(frames, {}, source)
    assert [bool(frame.any()) for frame in hint] == [True, False, False, True, True]


@pytest.mark.parametrize("batch", ["batch", 1, 2])
def test_batching_does_not_change_the_file(tmp_path: Path, batch: int | str) -> None:
    folder = tiny_dwpose(tmp_path / DWPOSE_REPO, batch=batch)
    models = load_wholebody({DWPOSE_REPO: folder}, "cpu", KeypointParams())
    assert models.detector.fixed_batch == (None if batch == "batch" else batch)
    frames = clip([BRIGHT, DARK, (120, 10, 240), BRIGHT, DARK])
    written = []
    for batch_size in (1, 2, 5, 16):
        path = tmp_path / f"{batch_size}.pickle"
        KEYPOINT_FILE.annotator.annotate(models, frames, 24.0, path, batch_size)  # type: ignore[union-attr]
        written.append(path.read_bytes())
    assert all(data == written[0] for data in written)


def test_a_clip_without_people_has_an_empty_list_per_frame(models: WholebodyModels,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "empty.pickle"
    KEYPOINT_FILE.annotator.annotate(models, clip([DARK] * 3), 30.0, path, 4)  # type: ignore[union-attr]
    assert load_pickle(path) == {0: [], 1: [], 2: []}


def test_frames_must_be_rgb_uint8(models: WholebodyModels) -> None:
    with pytest.raises(ValueError, match=r"RGB uint8 \[T, H, W, 3\]"):
        keypoints_per_frame(models, clip([BRIGHT]).astype(np.float32), 1)


# --- loading ---------------------------------------------------------------------------------

def test_missing_files_name_fetch_weights(tmp_path: Path) -> None:
    folder = tmp_path / DWPOSE_REPO
    folder.mkdir(parents=True)
    write_detector(folder / DETECTOR_FILE, "batch")
    with pytest.raises(FileNotFoundError, match=r"lacks dw-ll_ucoco_384.onnx .*fetch-weights"):
        load_wholebody({DWPOSE_REPO: folder}, "cpu", KeypointParams())


def test_devices(tmp_path: Path) -> None:
    import onnxruntime

    folder = tiny_dwpose(tmp_path / DWPOSE_REPO)
    with pytest.raises(RuntimeError, match="'cpu', 'cuda' or 'cuda:N', not 'mps'"):
        load_wholebody({DWPOSE_REPO: folder}, "mps", KeypointParams())
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(RuntimeError, match="install onnxruntime-gpu"):
            load_wholebody({DWPOSE_REPO: folder}, "cuda:0", KeypointParams())


def test_a_file_that_is_not_onnx_does_not_load(tmp_path: Path) -> None:
    folder = tiny_dwpose(tmp_path / DWPOSE_REPO)
    (folder / POSE_FILE).write_bytes(b"<html>not a model</html>")
    with pytest.raises(ValueError, match=r"dw-ll_ucoco_384\.onnx is not a loadable ONNX model"):
        load_wholebody({DWPOSE_REPO: folder}, "cpu", KeypointParams())


# --- the tiny flavor's stand-ins ---------------------------------------------------------------

def test_make_tiny_writes_the_release_files_deterministically(tmp_path: Path) -> None:
    annotator = KEYPOINT_FILE.annotator
    assert annotator is not None and annotator.make_tiny is make_tiny
    make_tiny(DWPOSE_REPO, tmp_path / "a")
    make_tiny(DWPOSE_REPO, tmp_path / "b")
    make_tiny(DWPOSE_REPO, tmp_path / "c", seed=1)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted([DETECTOR_FILE, POSE_FILE])
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()
    with pytest.raises(ValueError, match="no stand-in for 'org/other'"):
        make_tiny("org/other", tmp_path / "d")


def test_the_tiny_stand_ins_annotate_a_clip(tmp_path: Path) -> None:
    folder = tmp_path / DWPOSE_REPO
    make_tiny(DWPOSE_REPO, folder)
    models = load_wholebody({DWPOSE_REPO: folder}, "cpu", KeypointParams())
    assert models.detector.input_hw == (64, 64) and models.pose.input_hw == (32, 24)
    frames = np.full((6, H, W, 3), 40, np.uint8)
    for t in range(6):
        frames[t, 10:30, 5 + 4 * t:25 + 4 * t] = (200, 150, 100)
    path = tmp_path / "clip.pickle"
    KEYPOINT_FILE.annotator.annotate(models, frames, 24.0, path, 4)  # type: ignore[union-attr]
    info = ClipInfo(name="clip", frame_count=6, width=W, height=H, fps=24.0)
    assert check_keypoints(path, info) is None
    content = load_pickle(path)
    # pinned: persons per frame of the seed-0 stand-ins (at most the four stride-32 anchors)
    assert [len(content[t]) for t in range(6)] == [4, 4, 3, 4, 4, 3]
    bodies = np.stack([p["body-keypoints"] for t in range(6) for p in content[t]])
    assert bodies.shape[1:] == (133, 3)
    assert 0.3 < float((bodies[..., 2] >= 0.6).mean()) < 0.9  # some keypoints drawn, not all
    source = KEYPOINT_FILE.read(path, ClipWindow(clip=info, start=0, num_frames=6))
    hint = KEYPOINT.build_generator(KeypointParams()).render(frames, {}, source)
    assert all(frame.any() for frame in hint)
