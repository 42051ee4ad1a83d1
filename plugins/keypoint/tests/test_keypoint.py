"""The ``keypoint`` plugin: skeletons against a step-by-step recomputation, OpenPose order,
thresholds, the file."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

import ctrlpost_keypoint
from ctrlpost.modalities import ClipInfo, ClipWindow, HintFileError
from ctrlpost_keypoint import (
    KEYPOINT,
    KeypointFrames,
    KeypointParams,
    build_generator,
    check_keypoints,
    read_keypoints,
    synthesize_keypoints,
    to_openpose,
    write_keypoint_pickle,
)

H, W = 72, 112

# --- the reference's skeleton, written out by joint name (a second, independent transcription)

_BODY_NAMES = ["nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
               "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip",
               "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear"]
_BODY_COLORS = [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0],
                [85, 255, 0], [0, 255, 0], [0, 255, 85], [0, 255, 170], [0, 255, 255],
                [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255], [170, 0, 255],
                [255, 0, 255], [255, 0, 170], [255, 0, 85]]
_FEET = ["left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe",
         "right_heel"]
_FINGERS = ["thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger"]


def _hand(side: str) -> list[str]:
    return [f"{side}_hand_root"] + [f"{side}_{f}{k}" for f in _FINGERS for k in range(1, 5)]


JOINTS = ([(n, c) for n, c in zip(_BODY_NAMES, _BODY_COLORS, strict=True)]
          + [(n, [0, 0, 0]) for n in _FEET]
          + [(f"face-{k}", [255, 255, 255]) for k in range(68)]
          + [(n, [0, 0, 255]) for n in _hand("left") + _hand("right")])
BODY_LINKS = [
    ("neck", "right_shoulder", [255, 0, 0]), ("neck", "left_shoulder", [255, 85, 0]),
    ("right_shoulder", "right_elbow", [255, 170, 0]), ("right_elbow", "right_wrist", [255, 255, 0]),
    ("left_shoulder", "left_elbow", [170, 255, 0]), ("left_elbow", "left_wrist", [85, 255, 0]),
    ("neck", "right_hip", [0, 255, 0]), ("right_hip", "right_knee", [0, 255, 85]),
    ("right_knee", "right_ankle", [0, 255, 170]), ("neck", "left_hip", [0, 255, 225]),
    ("left_hip", "left_knee", [0, 170, 255]), ("left_knee", "left_ankle", [0, 85, 255]),
    ("neck", "nose", [0, 0, 255]), ("nose", "right_eye", [255, 0, 170]),
    ("right_eye", "right_ear", [170, 0, 255]), ("nose", "left_eye", [255, 0, 255]),
    ("left_eye", "left_ear", [255, 0, 170]),
]
HAND_LINK_COLORS = [
    [255, 0, 0], [255, 76, 0], [255, 153, 0], [255, 230, 0], [204, 255, 0], [128, 255, 0],
    [51, 255, 0], [0, 255, 26], [0, 255, 102], [0, 255, 178], [0, 255, 255], [0, 178, 255],
    [0, 102, 255], [0, 26, 255], [51, 0, 255], [128, 0, 255], [204, 0, 255], [255, 0, 230],
    [255, 0, 153], [255, 0, 76],
]


def _hand_links(side: str) -> list[tuple[str, str, list[int]]]:
    links = []
    for f in _FINGERS:
        chain = [f"{side}_hand_root"] + [f"{side}_{f}{k}" for k in range(1, 5)]
        links += list(pairwise(chain))
    colors = [list(c) for c in HAND_LINK_COLORS]
    if side == "right":
        colors[10] = [255, 255, 255]  # right middle finger 2->3, as in the reference's table
    return [(a, b, c) for (a, b), c in zip(links, colors, strict=True)]


LINKS = BODY_LINKS + _hand_links("left") + _hand_links("right")


def reference_hint(persons_per_frame: list[list[dict]], h: int, w: int, thr: float = 0.6,
                   radius: int = 2, line_width: int = 4) -> np.ndarray:
    """The reference's steps, written out: scale by [w, h, 1], stack body over hand, insert the
    neck at 17 and reorder to OpenPose, then per person dots (joint order) and lines (link
    order, looked up by name) on a float64 canvas, cast to uint8 at the end. [T, H, W, 3]."""
    out = []
    index_of = {name: i for i, (name, _) in enumerate(JOINTS)}
    for persons in persons_per_frame:
        canvas = np.zeros([h, w, 3])
        for person in persons:
            body = person["body-keypoints"] * np.array([w, h, 1])
            hand = person["hand-keypoints"] * np.array([w, h, 1])
            info = np.vstack([body, hand])[None]
            neck = np.mean(info[:, [5, 6]], axis=1)
            neck[:, 2:3] = np.where(info[:, 5, 2:3] > info[:, 6, 2:3], info[:, 6, 2:3],
                                    info[:, 5, 2:3])
            info = np.insert(info, 17, neck, axis=1)
            info[:, [1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17]] = info[
                :, [17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3]]
            kpts, scores = info[0, :, :2], info[0, :, 2]
            visible = [s >= thr for s in scores]
            for i, (_, color) in enumerate(JOINTS):
                if visible[i]:
                    center = (int(kpts[i][0]), int(kpts[i][1]))
                    canvas = cv2.circle(canvas, center, radius, tuple(color), -1)
            for a, b, color in LINKS:
                i, j = index_of[a], index_of[b]
                if visible[i] and visible[j]:
                    canvas = cv2.line(canvas, (int(kpts[i][0]), int(kpts[i][1])),
                                      (int(kpts[j][0]), int(kpts[j][1])), color,
                                      thickness=line_width)
        out.append(canvas.astype(np.uint8))
    return np.stack(out)


# --- synthetic annotations -----------------------------------------------------------------

def random_person(rng: np.random.Generator, dtype: type = np.float16) -> dict[str, np.ndarray]:
    """A person as rtmlib-based annotators store one: normalised x, y (some off the frame),
    confidences across the threshold; the hand array repeats body rows 91:133."""
    body = np.empty((133, 3))
    body[:, :2] = rng.uniform(-0.1, 1.1, size=(133, 2))
    body[:, 2] = rng.uniform(0.3, 1.0, size=133)
    body = body.astype(dtype)
    return {"body-keypoints": body, "hand-keypoints": body[91:133].copy()}


def random_frames(seed: int, num_frames: int = 4) -> list[list[dict]]:
    rng = np.random.default_rng(seed)
    return [[random_person(rng) for _ in range(int(rng.integers(0, 4)))]
            for _ in range(num_frames)]


def render(persons_per_frame: list[list[dict]], params: KeypointParams | None = None,
           h: int = H, w: int = W) -> np.ndarray:
    source = KeypointFrames(persons=tuple(tuple(p["body-keypoints"] for p in persons)
                                          for persons in persons_per_frame))
    frames = np.zeros((len(persons_per_frame), h, w, 3), dtype=np.uint8)
    generator = build_generator(params or KeypointParams())
    return generator.render(frames, generator.draw(np.random.default_rng(0), source), source)


# --- rendering -----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_render_equals_reference_steps(seed: int) -> None:
    persons = random_frames(seed)
    hint = render(persons)
    assert hint.dtype == np.uint8 and hint.shape == (len(persons), H, W, 3)
    np.testing.assert_array_equal(hint, reference_hint(persons, H, W))
    assert hint.any()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_render_with_other_parameters_and_dtypes(dtype: type) -> None:
    rng = np.random.default_rng(5)
    persons = [[random_person(rng, dtype) for _ in range(3)] for _ in range(2)]
    params = KeypointParams(confidence_threshold=0.45, line_width=7, radius=5)
    np.testing.assert_array_equal(render(persons, params),
                                  reference_hint(persons, H, W, thr=0.45, radius=5, line_width=7))


def test_later_persons_and_black_feet_paint_over_earlier_pixels() -> None:
    first = {"body-keypoints": np.zeros((133, 3), np.float32)}
    first["body-keypoints"][[5, 7], :] = [[0.2, 0.5, 1.0], [0.8, 0.5, 1.0]]  # a left upper arm
    second = {"body-keypoints": np.zeros((133, 3), np.float32)}
    second["body-keypoints"][17] = [0.5, 0.5, 0.9]  # a left big toe on that arm
    for p in (first, second):
        p["hand-keypoints"] = p["body-keypoints"][91:133].copy()
    hint = render([[first, second]])[0]
    y, x = int(0.5 * H), int(0.5 * W)
    assert hint[y, x - 10].tolist() == [170, 255, 0]  # the arm's link colour
    assert hint[y, x].tolist() == [0, 0, 0]  # blackened by the second person's foot dot
    np.testing.assert_array_equal(hint, reference_hint([[first, second]], H, W)[0])


def test_hand_array_is_not_drawn() -> None:
    persons = random_frames(3)
    for frame in persons:
        for person in frame:
            person["hand-keypoints"] = np.zeros((42, 3), np.float16) + np.float16(0.99)
    np.testing.assert_array_equal(render(persons), render(random_frames(3)))


# sha256 of render(random_frames(100, 3)). OpenCV 4.10, 4.11 and 4.12 (the reference's) give
# the first; 4.13 to 5.1 rasterise thick lines differently and give the second. Regenerate with
# `python plugins/keypoint/tests/test_keypoint.py` after a deliberate change.
PINNED_SHA256 = {
    "4.10-4.12": "08100c3b1c90bab970f47837d08234e4ab8b5492bdcfaecd3e9f183eb900b4ad",
    "4.13-5.1": "7eba63ec6070519d8b3f57c9d4239fe28b9093e654eb884881840cfd7c161051",
}


def test_hint_is_pinned() -> None:
    digest = hashlib.sha256(render(random_frames(100, 3)).tobytes()).hexdigest()
    exact = KEYPOINT.exact_on[0].holds()
    assert digest == PINNED_SHA256["4.10-4.12" if exact else "4.13-5.1"], (
        f"keypoint hint changed (cv2 {cv2.__version__})")


# --- OpenPose order and thresholds ---------------------------------------------------------

def test_openpose_conversion_of_a_hand_made_person() -> None:
    coco = np.zeros((133, 3))
    coco[:, 0] = np.arange(133)  # x = COCO row, so each output row says where it came from
    coco[:, 1] = 1000 + np.arange(133)
    coco[:, 2] = 0.9
    coco[5] = [10.0, 20.0, 0.8]  # left shoulder
    coco[6] = [31.0, 40.0, 0.7]  # right shoulder
    joints = to_openpose(coco)
    assert joints.shape == (134, 3)
    np.testing.assert_array_equal(joints[1], [20.5, 30.0, 0.7])  # neck: mean, lower confidence
    names_from_coco = {"nose": 0, "right_shoulder": 6, "right_elbow": 8, "right_wrist": 10,
                       "left_shoulder": 5, "left_elbow": 7, "left_wrist": 9, "right_hip": 12,
                       "right_knee": 14, "right_ankle": 16, "left_hip": 11, "left_knee": 13,
                       "left_ankle": 15, "right_eye": 2, "left_eye": 1, "right_ear": 4,
                       "left_ear": 3}
    for i, name in enumerate(_BODY_NAMES):
        if name != "neck":
            np.testing.assert_array_equal(joints[i], coco[names_from_coco[name]], err_msg=name)
    np.testing.assert_array_equal(joints[18:], coco[17:])  # feet, face, hands in COCO order
    coco[5, 2], coco[6, 2] = 0.5, 0.95
    assert to_openpose(coco)[1, 2] == 0.5


def dot_person(confidences: dict[int, float], dtype: type = np.float16) -> dict[str, np.ndarray]:
    """Left shoulder (COCO 5) and elbow (COCO 7) at fixed places, other joints invisible."""
    body = np.zeros((133, 3), dtype=np.float64)
    body[5, :2], body[7, :2] = [0.25, 0.5], [0.75, 0.5]
    for row, confidence in confidences.items():
        body[row, 2] = confidence
    body = body.astype(dtype)
    return {"body-keypoints": body, "hand-keypoints": body[91:133].copy()}


@pytest.mark.parametrize(("shoulder", "elbow", "dots", "line"), [
    (0.6, 0.6, (True, True), True),  # the threshold itself counts as visible
    (0.9, 0.59, (True, False), False),
    (0.599, 0.95, (False, True), False),  # 0.599 stays below 0.6 even in float16
    (0.1, 0.2, (False, False), False),
])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_confidence_threshold(shoulder: float, elbow: float, dots: tuple[bool, bool],
                              line: bool, dtype: type) -> None:
    hint = render([[dot_person({5: shoulder, 7: elbow}, dtype)]])[0]
    y = int(0.5 * H)
    black, link = [0, 0, 0], [170, 255, 0]  # left shoulder -> left elbow
    shoulder_dot, elbow_dot = [85, 255, 0], [0, 255, 0]  # OpenPose joints 5 and 6
    assert hint[y, int(0.5 * W)].tolist() == (link if line else black)
    expected_shoulder = link if line else shoulder_dot if dots[0] else black
    expected_elbow = link if line else elbow_dot if dots[1] else black
    assert hint[y, int(0.25 * W)].tolist() == expected_shoulder
    assert hint[y, int(0.75 * W)].tolist() == expected_elbow
    assert int(hint.any(axis=2).sum()) > 0 or not any(dots)


# --- drawing -------------------------------------------------------------------------------

def test_draw_is_empty_and_uses_no_randomness() -> None:
    rng = np.random.default_rng(9)
    source = KeypointFrames(persons=((),))
    assert build_generator(KeypointParams()).draw(rng, source) == {}
    assert rng.random() == np.random.default_rng(9).random()


# --- the file ------------------------------------------------------------------------------

CLIP = ClipInfo(name="clip", frame_count=5, width=W, height=H, fps=30.0)


def window(start: int, num_frames: int) -> ClipWindow:
    return ClipWindow(clip=CLIP, start=start, num_frames=num_frames)


def test_round_trip(tmp_path: Path) -> None:
    persons = random_frames(4, num_frames=5)
    path = tmp_path / "keypoint" / "clip.pickle"
    frames = {t: [{"body-keypoints": p["body-keypoints"]} for p in ps]
              for t, ps in enumerate(persons)}  # hand arrays left to the writer
    frames[2] = [persons[2][0]["body-keypoints"]] if persons[2] else []  # a bare array works too
    write_keypoint_pickle(path, frames)
    assert check_keypoints(path, CLIP) is None
    stored = pickle.loads(path.read_bytes())
    assert sorted(stored) == list(range(5))
    for ps in stored.values():
        for p in ps:
            assert p["body-keypoints"].dtype == np.float16
            np.testing.assert_array_equal(p["hand-keypoints"], p["body-keypoints"][91:133])
    got = read_keypoints(path, window(1, 3))
    assert len(got.persons) == 3
    for t, bodies in zip(range(1, 4), got.persons, strict=True):
        assert len(bodies) == len(frames[t])
        for body, person in zip(bodies, frames[t], strict=True):
            expected = person if isinstance(person, np.ndarray) else person["body-keypoints"]
            np.testing.assert_array_equal(body, expected)


def test_check_names_a_missing_frame(tmp_path: Path) -> None:
    path = tmp_path / "clip.pickle"
    write_keypoint_pickle(path, {0: [], 1: [], 3: [], 4: []})
    problem = check_keypoints(path, CLIP)
    assert problem is not None and "no entry for frame 2" in problem and "empty list" in problem
    with pytest.raises(HintFileError, match=r"clip\.pickle: has no entry for frame 2"):
        read_keypoints(path, window(1, 3))
    assert read_keypoints(path, window(3, 2)).persons == ((), ())


def test_frames_after_the_clip_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "clip.pickle"
    write_keypoint_pickle(path, {t: [] for t in range(CLIP.frame_count + 3)})
    assert check_keypoints(path, CLIP) is None


def write_raw(path: Path, content: object) -> Path:
    path.write_bytes(pickle.dumps(content))
    return path


def good_person() -> dict[str, np.ndarray]:
    return random_person(np.random.default_rng(0))


@pytest.mark.parametrize(("content", "expected"), [
    ([], "holds a list, not a dict of frame index"),
    ({"0": []}, "has the key '0'; keys must be frame indices"),
    ({t: {} for t in range(5)}, "frame 0 holds a dict, not a list of persons"),
    ({t: [{"body-keypoints": np.zeros((133, 3))}] for t in range(5)},
     "frame 0, person 0 is not a dict with 'body-keypoints' and 'hand-keypoints'"),
    ({t: [{**good_person(), "body-keypoints": np.zeros((17, 3))}] for t in range(5)},
     "frame 0, person 0: body-keypoints has shape (17, 3), not (133, 3)"),
    ({t: [{**good_person(), "hand-keypoints": np.zeros((21, 3))}] for t in range(5)},
     "frame 0, person 0: hand-keypoints has shape (21, 3), not (42, 3)"),
    ({**{t: [] for t in range(4)}, 4: [good_person(), {**good_person(), "body-keypoints":
      np.full((133, 3), np.nan)}]}, "frame 4, person 1: body-keypoints holds NaN"),
    ({t: [{**good_person(), "body-keypoints": np.full((133, 3), "x")}] for t in range(5)},
     "holds <U1 values, not numbers"),
])
def test_check_names_what_is_wrong(tmp_path: Path, content: object, expected: str) -> None:
    path = write_raw(tmp_path / "clip.pickle", content)
    assert expected in (check_keypoints(path, CLIP) or ""), check_keypoints(path, CLIP)


def test_numpy_integer_keys_and_every_protocol_load(tmp_path: Path) -> None:
    content = {np.int64(t): [good_person()] for t in range(5)}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.pickle"
        path.write_bytes(pickle.dumps(content, protocol=protocol))
        assert check_keypoints(path, CLIP) is None, protocol
        body = read_keypoints(path, window(4, 1)).persons[0][0]
        np.testing.assert_array_equal(body, good_person()["body-keypoints"])


class CreatesFile:
    """Unpickling this with plain ``pickle`` runs ``os.system("touch <target>")``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.target}",)


def test_a_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    decoy = tmp_path / "decoy"
    pickle.loads(pickle.dumps(CreatesFile(decoy)))
    assert decoy.exists()  # the payload is live under plain pickle

    target = tmp_path / "pwned"
    content = {t: [good_person()] for t in range(5)}
    content[3][0]["bbox"] = CreatesFile(target)
    path = write_raw(tmp_path / "clip.pickle", content)
    system = f"{os.system.__module__}.system"
    problem = check_keypoints(path, CLIP)
    assert problem is not None and f"'{system}'" in problem and "refused" in problem
    with pytest.raises(HintFileError, match=system):
        read_keypoints(path, window(0, 2))
    assert not target.exists()


def test_builtin_types_load_but_not_from_a_size(tmp_path: Path) -> None:
    from ctrlpost.modalities.safe_pickle import load_pickle

    values = [b"", b"ab", bytearray(b"xy"), bytearray(), {1, 2}, frozenset({3})]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.pickle"
        path.write_bytes(pickle.dumps(values, protocol=protocol))
        assert load_pickle(path) == values, protocol
    path = tmp_path / "clip.pickle"
    path.write_bytes(b"c__builtin__\nbytes\n(I1000000000000\ntR.")  # bytes(10**12): 1 TB
    assert "bytes(<size>)" in (check_keypoints(path, CLIP) or "")


# --- the plugin ----------------------------------------------------------------------------

def test_params_model_is_strict() -> None:
    assert KeypointParams() == KeypointParams(confidence_threshold=0.6, line_width=4, radius=2)
    with pytest.raises(ValidationError, match="extra"):
        KeypointParams.model_validate({"hand_as_separate_channel": True})
    with pytest.raises(ValidationError, match="less than or equal"):
        KeypointParams(confidence_threshold=1.5)
    with pytest.raises(ValidationError, match="frozen"):
        KeypointParams().radius = 3  # type: ignore[misc]
    for name, field in KeypointParams.model_fields.items():
        assert field.description, f"{name} has no description"


def test_modality_descriptor(tmp_path: Path) -> None:
    assert KEYPOINT.name == "keypoint" and KEYPOINT.hint_key == "control_input_keypoint"
    assert KEYPOINT.hint_channels == 3
    assert ctrlpost_keypoint.ctrlpost_register_modalities() == [KEYPOINT]
    assert KEYPOINT.released_control_file == "keypoint_control.pt"
    hint_file = KEYPOINT.hint_file
    assert hint_file is not None and (hint_file.folder, hint_file.suffix) == ("keypoint", ".pickle")
    path = hint_file.path(tmp_path, "clip")
    write_keypoint_pickle(path, {t: [good_person()] for t in range(5)})
    source = hint_file.read(path, window(0, 5))
    generator = KEYPOINT.build_generator(KEYPOINT.validate_params({}))
    hint = generator.render(np.zeros((5, H, W, 3), np.uint8), {}, source)
    assert hint.shape == (5, H, W, 3) and hint.any()


def test_import_loads_neither_torch_nor_cv2_nor_onnxruntime() -> None:
    code = ("import ctrlpost_keypoint, sys; "
            "print(*(m in sys.modules for m in ('torch', 'cv2', 'onnxruntime')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


if __name__ == "__main__":  # prints a fresh pin after a deliberate change
    print(hashlib.sha256(render(random_frames(100, 3)).tobytes()).hexdigest())


# --- synthesize: a pseudo keypoint file for a synthetic clip ------------------------------


def shape_clip(T: int = 24, H: int = 48, W: int = 64, pan: int = 0, shape: bool = True,
               side: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 [T, H, W, 3] frames as the synthetic source draws them (a flat red square of
    ``side`` pixels moving right and down over blue diagonal stripes with grain; the camera
    panning ``pan`` pixels a frame; no square when not ``shape``) and the square's boolean masks
    [T, H, W]."""
    rng = np.random.default_rng(7)
    canvas_W = W + pan * T
    y, x = np.mgrid[0:H, 0:canvas_W]
    shade = np.where(((x + y) // 5) % 2 == 0, 1.0, 0.45)[..., None]
    grain = rng.normal(0.0, 4.0, size=(H, canvas_W, 1))
    canvas = np.clip(np.array([30, 90, 220]) * shade + grain, 0, 255).astype(np.uint8)
    clip_frames = np.stack([canvas[:, pan * t:pan * t + W] for t in range(T)])
    squares = np.zeros((T, H, W), dtype=bool)
    for t in range(T):
        squares[t, 8 + t // 2:8 + side + t // 2, 4 + 2 * t:4 + side + 2 * t] = shape
    clip_frames[squares] = (220, 40, 40)
    return clip_frames, squares


def shape_clip_info(clip_frames: np.ndarray) -> ClipInfo:
    T_, H_, W_ = clip_frames.shape[:3]
    return ClipInfo(name="clip", frame_count=T_, width=W_, height=H_, fps=24.0)


@pytest.mark.parametrize("pan", [0, 2])
def test_foreground_masks_find_the_moving_shape(pan: int) -> None:
    from ctrlpost.modalities.foreground import foreground_masks

    clip_frames, squares = shape_clip(pan=pan)
    masks = foreground_masks(clip_frames)
    assert masks.dtype == bool and masks.shape == squares.shape
    assert (masks & squares).sum() / (masks | squares).sum() > 0.95
    assert not foreground_masks(shape_clip(pan=pan, shape=False)[0]).any()
    with pytest.raises(ValueError, match=r"RGB uint8 \[T, H, W, 3\]"):
        foreground_masks(clip_frames[..., 0])


@pytest.mark.parametrize(("pan", "side"), [(0, 14), (2, 14), (0, 30)])
def test_synthesize_writes_a_keypoint_file_the_clip_can_use(tmp_path: Path, pan: int,
                                                          side: int) -> None:
    clip_frames, squares = shape_clip(pan=pan, side=side)
    clip = shape_clip_info(clip_frames)
    path = tmp_path / "keypoint" / "clip.pickle"
    assert KEYPOINT.hint_file is not None and KEYPOINT.hint_file.synthesize is not None
    KEYPOINT.hint_file.synthesize(clip_frames, 24.0, path)
    assert KEYPOINT.hint_file.check(path, clip) is None
    source = KEYPOINT.hint_file.read(path, ClipWindow(clip=clip, start=5, num_frames=17))
    assert [len(bodies) for bodies in source.persons] == [1] * 17
    body = source.persons[0][0]
    assert (body[:17, 2] == 1.0).all() and (body[17:, 2] == 0.0).all()
    assert ((body[:, :2] >= 0) & (body[:, :2] <= 1)).all()
    generator = build_generator(KeypointParams())
    hint = generator.render(clip_frames[5:22], generator.draw(np.random.default_rng(0), source),
                            source)
    drawn = hint.any(axis=-1)
    for t in range(17):
        ys, xs = np.nonzero(squares[5 + t])
        box = np.zeros_like(drawn[t])  # the square's bounding box, 3 pixels wider all round
        box[max(0, ys.min() - 3):ys.max() + 4, max(0, xs.min() - 3):xs.max() + 4] = True
        assert drawn[t].sum() >= 0.3 * squares[5 + t].sum()
        assert not (drawn[t] & ~box).any(), f"frame {t} draws outside the shape"
    # a coloured body, not a blot: many link colours (a 14-pixel figure's links overlap)
    colours = {tuple(c) for c in hint.reshape(-1, 3).tolist()} - {(0, 0, 0)}
    assert len(colours) >= 8
    if side >= 30:  # e.g. neck-right shoulder (red) and the left shin (blue) both show
        assert {(255, 0, 0), (0, 85, 255)} <= colours


def test_synthesize_leaves_frames_without_the_shape_empty(tmp_path: Path) -> None:
    clip_frames, squares = shape_clip()
    clip_frames, squares = clip_frames[:, :, 30:], squares[:, :, 30:]  # enters at frame 7
    clip = shape_clip_info(clip_frames)
    synthesize_keypoints(clip_frames, 24.0, tmp_path / "k.pickle")
    assert check_keypoints(tmp_path / "k.pickle", clip) is None
    stored = pickle.loads((tmp_path / "k.pickle").read_bytes())
    assert sorted(stored) == list(range(24))
    present = [bool(stored[t]) for t in range(24)]
    assert present == [bool(squares[t].sum() >= 4) for t in range(24)]
    assert not any(present[:6]) and all(present[8:])
    source = read_keypoints(tmp_path / "k.pickle", ClipWindow(clip=clip, start=0, num_frames=24))
    hint = build_generator(KeypointParams()).render(clip_frames, {}, source)
    assert not hint[:6].any() and hint[8:].reshape(16, -1).any(axis=1).all()


def test_synthesize_is_deterministic(tmp_path: Path) -> None:
    clip_frames, _ = shape_clip(pan=2)
    synthesize_keypoints(clip_frames, 24.0, tmp_path / "a.pickle")
    synthesize_keypoints(clip_frames.copy(), 24.0, tmp_path / "b.pickle")
    assert (tmp_path / "a.pickle").read_bytes() == (tmp_path / "b.pickle").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pickle", "b.pickle"]
