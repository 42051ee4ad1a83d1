"""The ``seg`` plugin: hint pixels against a step-by-step recomputation, draws, the seg file."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

import ctrlpost_seg
from ctrlpost.modalities import ClipInfo, ClipWindow, HintFileError, sample_rng
from ctrlpost_seg import (
    SEG,
    SegHints,
    SegMasks,
    SegParams,
    build_generator,
    check_seg,
    hsv_to_rgb_uint8,
    read_seg,
    synthesize_seg,
    write_seg_pickle,
)
from ctrlpost_seg.hints import LOOP_MAX_RUNS

# The reference recomputation decodes with pycocotools, which trips numpy 2's copy= notice.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

T, H, W = 6, 10, 14
CLIP = ClipInfo(name="clip", frame_count=T, width=W, height=H, fps=24.0)


def synthetic_masks() -> list[tuple[str, np.ndarray]]:
    """Five whole-clip masks from integer arithmetic: overlapping boxes that move, one object
    that exists only in the first two frames, one empty, two of equal size in every frame."""
    t = np.arange(T)[:, None, None]
    y = np.arange(H)[None, :, None]
    x = np.arange(W)[None, None, :]
    big = (y >= 1) & (y < 9) & (x >= t) & (x < t + 9)
    small = (y >= 3) & (y < 6) & (x >= 5) & (x < 9) & (t >= 0)
    early = (t < 2) & (y < 4) & (x >= 10)
    empty = np.zeros((T, H, W), dtype=bool)
    twin = (y >= 6) & (y < 9) & (x >= 10 - t) & (x < 14 - t)  # 12 pixels per frame, as `small`
    return [("car", big), ("person", small), ("dog", early), ("sky", empty), ("tree", twin)]


def reference_hint(records: list[dict], start: int, stop: int, chosen: list[int],
                   colors: list[list[int]]) -> np.ndarray:
    """The reference's steps for given selections and colours, written out separately: decode
    each chosen object's whole column with pycocotools, reshape to its mask_shape, keep the
    window's frames, scale to 0/255 uint8, stable-sort by nonzero count (most first), paint the
    k-th with the k-th colour channel by channel. Returns [T, H, W, 3]."""
    from pycocotools import mask as coco_mask

    masks = []
    for mid in chosen:
        rle = records[mid]["segmentation_mask_rle"]
        full = coco_mask.decode(rle["data"]).reshape(rle["mask_shape"]) * 255
        masks.append(np.stack([full[i] for i in range(start, stop)]))
    ordered = sorted(masks, key=lambda m: np.count_nonzero(m), reverse=True)
    out_C_T_H_W = np.zeros((3, stop - start, H, W), dtype=np.uint8)
    for i, mask in enumerate(ordered):
        color = np.array(colors[i]).astype(np.uint8)
        for c in range(3):
            out_C_T_H_W[c][mask > 0] = color[c]
    return out_C_T_H_W.transpose(1, 2, 3, 0)


def reference_layout_pickle(path: Path, objects: list[tuple[str, np.ndarray]]) -> list[dict]:
    """A seg file built as the reference's SAM2 helper encodes masks: a Fortran-ordered copy,
    ``reshape(-1, 1)`` (C order), a Fortran (N, 1) column, pycocotools ``encode``."""
    from pycocotools import mask as coco_mask

    records = []
    for phrase, mask in objects:
        fortran = np.array(mask, order="F")
        encoded = coco_mask.encode(np.array(fortran.reshape(-1, 1), order="F"))
        records.append({"phrase": phrase,
                        "segmentation_mask_rle": {"data": encoded, "mask_shape": fortran.shape}})
    path.write_bytes(pickle.dumps(records))
    return records


@pytest.fixture
def seg_file(tmp_path: Path) -> tuple[Path, list[dict]]:
    path = tmp_path / "seg" / "clip.pickle"
    path.parent.mkdir()
    return path, reference_layout_pickle(path, synthetic_masks())


def window(start: int, num_frames: int) -> ClipWindow:
    return ClipWindow(clip=CLIP, start=start, num_frames=num_frames)


def frames(num_frames: int) -> np.ndarray:
    return np.zeros((num_frames, H, W, 3), dtype=np.uint8)


# --- rendering ---------------------------------------------------------------------------

RENDER_CASES = [
    ([0, 1, 2, 3, 4], 0, 6),  # everything, whole clip
    ([4, 1, 0], 1, 4),  # twins of equal size: selection order breaks the tie
    ([1, 4, 0], 1, 4),  # the other tie order
    ([2, 3, 1], 2, 4),  # an object with no pixel in the window still takes a colour slot
    ([3], 0, 6),  # only the empty mask: all black
    ([], 0, 6),  # nothing drawn
]


@pytest.mark.parametrize("loop_max_runs", [LOOP_MAX_RUNS, 0])  # run by run; through a mask
@pytest.mark.parametrize(("chosen", "start", "stop"), RENDER_CASES)
def test_render_equals_reference_steps(seg_file: tuple[Path, list[dict]], chosen: list[int],
                                       start: int, stop: int, loop_max_runs: int) -> None:
    path, records = seg_file
    colors = [[40 * k + 15, 250 - 30 * k, (97 * k) % 256] for k in range(len(chosen))]
    masks = read_seg(path, window(start, stop - start))
    drawn = {"objects": chosen, "hsv": [[0.0, 0.0, 0.0]] * len(chosen), "colors": colors}
    generator = SegHints(SegParams(), loop_max_runs=loop_max_runs)
    hint = generator.render(frames(stop - start), drawn, masks)
    assert hint.dtype == np.uint8 and hint.shape == (stop - start, H, W, 3)
    np.testing.assert_array_equal(hint, reference_hint(records, start, stop, chosen, colors))


@pytest.mark.parametrize("loop_max_runs", [LOOP_MAX_RUNS, 0])
def test_render_of_noisy_masks_equals_reference_steps(tmp_path: Path, loop_max_runs: int) -> None:
    rng = np.random.default_rng(5)
    objects = [(f"o{k}", rng.random((T, H, W)) < density)
               for k, density in enumerate((0.9, 0.5, 0.05, 0.5, 0.3, 0.0, 1.0))]
    path = tmp_path / "noisy.pickle"
    records = reference_layout_pickle(path, objects)
    chosen = [3, 0, 6, 2, 5, 1, 4]
    colors = [[int(v) for v in rng.integers(0, 256, 3)] for _ in chosen]
    masks = read_seg(path, window(1, 4))
    drawn = {"objects": chosen, "hsv": [[0.0, 0.0, 0.0]] * len(chosen), "colors": colors}
    hint = SegHints(SegParams(), loop_max_runs=loop_max_runs).render(frames(4), drawn, masks)
    np.testing.assert_array_equal(hint, reference_hint(records, 1, 5, chosen, colors))


def test_sort_uses_pixels_inside_the_window(seg_file: tuple[Path, list[dict]]) -> None:
    # In frames [0, 2) "dog" has more pixels than "person" (32 to 24); over the whole clip it
    # has fewer (32 to 72). The reference sorts within the window: dog takes colour 0.
    path, _ = seg_file
    masks = read_seg(path, window(0, 2))
    counts = {o.phrase: o.pixel_count for o in masks.objects}
    assert counts == {"car": 144, "person": 24, "dog": 32, "sky": 0, "tree": 24}
    generator = build_generator(SegParams())
    drawn = {"objects": [1, 2], "hsv": [[0, 0, 0]] * 2, "colors": [[1, 1, 1], [2, 2, 2]]}
    hint = generator.render(frames(2), drawn, masks)
    assert (hint[masks.mask(2)] == 1).all()  # dog: most pixels in the window, colour 0
    assert (hint[masks.mask(1)] == 2).all()  # person painted last, colour 1


def test_render_rejects_frames_of_another_size(seg_file: tuple[Path, list[dict]]) -> None:
    masks = read_seg(seg_file[0], window(0, 3))
    with pytest.raises(ValueError, match="do not match"):
        build_generator(SegParams()).render(frames(4), {"objects": [], "colors": []}, masks)


# --- drawing -------------------------------------------------------------------------------

def masks_with(n_objects: int) -> SegMasks:
    from ctrlpost_seg import SegObject

    empty = SegObject("x", np.array([T * H * W], dtype=np.int64))
    return SegMasks(shape=(T, H, W), objects=(empty,) * n_objects)


def test_draw_order_is_pinned() -> None:
    generator = build_generator(SegParams())
    rng, shadow = np.random.default_rng(2024), np.random.default_rng(2024)
    for _ in range(200):
        drawn = generator.draw(rng, masks_with(7))
        count = int(shadow.integers(0, 7, endpoint=True))
        objects = shadow.permutation(7)[:count].tolist()
        hsv = [[shadow.uniform(0, 1), shadow.uniform(0.1, 1), shadow.uniform(0.2, 1)]
               for _ in range(count)]
        assert drawn == {"objects": objects, "hsv": hsv,
                         "colors": [hsv_to_rgb_uint8(*c) for c in hsv]}
    assert rng.random() == shadow.random()


def test_draw_distribution() -> None:
    generator = build_generator(SegParams())
    rng = np.random.default_rng(7)
    draws = [generator.draw(rng, masks_with(5)) for _ in range(30_000)]
    sizes = Counter(len(d["objects"]) for d in draws)
    assert set(sizes) == set(range(6))  # 0..min(100, 5), both ends
    assert all(4_500 <= n <= 5_500 for n in sizes.values()), sizes  # 5000 each; >7 sigma
    picked = Counter(i for d in draws for i in d["objects"])
    assert set(picked) == set(range(5))  # each object is chosen half the time: 15000 each
    assert all(14_250 <= n <= 15_750 for n in picked.values()), picked
    assert all(len(set(d["objects"])) == len(d["objects"]) for d in draws)  # no repeats
    hsv = np.array([c for d in draws for c in d["hsv"]])
    for column, low in enumerate((0.0, 0.1, 0.2)):
        values = hsv[:, column]
        assert low <= values.min() < low + 0.001 and 0.999 < values.max() < 1.0
        assert abs(values.mean() - (low + 1) / 2) < 0.005
    rgb = np.array([c for d in draws for c in d["colors"]])
    assert rgb.min() >= 0 and rgb.max() <= 255
    assert rgb.max(axis=1).min() >= int(0.2 * 255)  # value >= 0.2: never darker than 51


def test_draw_caps_the_count_at_max_objects() -> None:
    rng = np.random.default_rng(3)
    sizes = [len(build_generator(SegParams()).draw(rng, masks_with(150))["objects"])
             for _ in range(3_000)]
    assert min(sizes) == 0 and max(sizes) == 100
    sizes = [len(build_generator(SegParams(max_objects=2)).draw(rng, masks_with(150))["objects"])
             for _ in range(300)]
    assert set(sizes) == {0, 1, 2}


def test_draw_of_a_file_without_objects_paints_black() -> None:
    generator = build_generator(SegParams())
    drawn = generator.draw(np.random.default_rng(0), masks_with(0))
    assert drawn == {"objects": [], "hsv": [], "colors": []}
    assert not generator.render(frames(T), drawn, masks_with(0)).any()


def test_hsv_conversion_is_matplotlibs_truncated() -> None:
    import matplotlib.colors as mcolors

    rng = np.random.default_rng(0)
    triples = [(rng.uniform(0, 1), rng.uniform(0.1, 1), rng.uniform(0.2, 1)) for _ in range(5000)]
    triples += [(h / 6, s, v) for h in range(7) for s in (0.0, 0.1, 1.0) for v in (0.2, 1.0)]
    triples += [(np.nextafter(k / 6, 0), 0.7, 0.9) for k in range(1, 7)]
    for h, s, v in triples:
        expected = (np.array(mcolors.hsv_to_rgb((h, s, v))) * 255).astype(np.uint8).tolist()
        assert hsv_to_rgb_uint8(h, s, v) == expected, (h, s, v)


def test_draw_is_plain_json_and_seedable(seg_file: tuple[Path, list[dict]]) -> None:
    masks = read_seg(seg_file[0], window(0, T))
    generator = build_generator(SegParams())
    drawn = generator.draw(sample_rng(0, 0, 3), masks)
    assert json.loads(json.dumps(drawn)) == drawn
    assert generator.draw(sample_rng(0, 0, 3), masks) == drawn
    assert len({json.dumps(generator.draw(sample_rng(0, 0, i), masks)) for i in range(20)}) > 10


# --- the file ------------------------------------------------------------------------------

def test_round_trip_in_the_reference_layout(tmp_path: Path) -> None:
    objects = synthetic_masks()
    ours, theirs = tmp_path / "ours.pickle", tmp_path / "theirs.pickle"
    write_seg_pickle(ours, objects)
    reference = reference_layout_pickle(theirs, objects)
    written = pickle.loads(ours.read_bytes())
    for mine, ref in zip(written, reference, strict=True):
        assert mine["phrase"] == ref["phrase"]
        assert mine["segmentation_mask_rle"]["mask_shape"] == ref["segmentation_mask_rle"][
            "mask_shape"]
        assert mine["segmentation_mask_rle"]["data"] == ref["segmentation_mask_rle"]["data"]
        assert isinstance(mine["segmentation_mask_rle"]["data"]["counts"], bytes)
    for path in (ours, theirs):
        assert check_seg(path, CLIP) is None
        for start, num in ((0, T), (2, 3), (5, 1)):
            masks = read_seg(path, window(start, num))
            assert masks.shape == (num, H, W)
            assert [o.phrase for o in masks.objects] == [p for p, _ in objects]
            for index, (_, mask) in enumerate(objects):
                np.testing.assert_array_equal(masks.mask(index), mask[start:start + num])


def test_partial_decoding_matches_pycocotools_on_random_masks(tmp_path: Path) -> None:
    from pycocotools import mask as coco_mask

    rng = np.random.default_rng(11)
    for trial in range(40):
        density = (0.0, 1.0, 0.02, 0.5, 0.98)[trial % 5]
        mask = rng.random((T, H, W)) < density
        path = tmp_path / f"{trial}.pickle"
        write_seg_pickle(path, [("o", mask)])
        data = pickle.loads(path.read_bytes())[0]["segmentation_mask_rle"]["data"]
        full = coco_mask.decode(data).reshape(T, H, W)
        if trial % 2:  # counts as str is accepted too
            data["counts"] = data["counts"].decode("ascii")
            path.write_bytes(pickle.dumps([{"phrase": "o", "segmentation_mask_rle": {
                "data": data, "mask_shape": (T, H, W)}}]))
        start = int(rng.integers(0, T))
        num = int(rng.integers(1, T - start + 1))
        masks = read_seg(path, window(start, num))
        np.testing.assert_array_equal(masks.mask(0), full[start:start + num].astype(bool))


def test_check_names_a_wrong_mask_shape(tmp_path: Path) -> None:
    path = tmp_path / "clip.pickle"
    write_seg_pickle(path, [("car", np.zeros((T - 1, H, W), dtype=bool))])
    problem = check_seg(path, CLIP)
    assert problem is not None
    assert "object 0 ('car')" in problem and f"mask_shape ({T - 1}, {H}, {W})" in problem
    assert f"frames {T - 1} instead of {T}" in problem and "height" not in problem
    with pytest.raises(HintFileError, match=f"frames {T - 1} instead of {T}"):
        read_seg(path, window(0, 2))
    write_seg_pickle(path, [("car", np.zeros((T, H + 2, W), dtype=bool))])
    assert f"height {H + 2} instead of {H}" in (check_seg(path, CLIP) or "")


def write_records(path: Path, records: object) -> Path:
    path.write_bytes(pickle.dumps(records))
    return path


def record(data: object, shape: object = (T, H, W)) -> list[dict]:
    return [{"phrase": "car", "segmentation_mask_rle": {"data": data, "mask_shape": shape}}]


@pytest.mark.parametrize(("content", "expected"), [
    ({"not": "a list"}, "holds a dict, not a list of objects"),
    ([{"phrase": "car"}], "object 0 is not a dict with 'phrase'"),
    (record({"size": [T * H * W + 1, 1], "counts": b"0"}),
     f"has RLE size [{T * H * W + 1}, 1]; mask_shape ({T}, {H}, {W}) needs [{T * H * W}, 1]"),
    (record({"size": [T * H * W, 1], "counts": [T * H * W]}), "counts of type list"),
    (record({"size": [T * H * W, 1], "counts": b"Q1"}), "cover 33 pixels, not 840"),
    (record({"size": [T * H * W, 1], "counts": b"Q"}), "ends in the middle of a run"),
    (record({"size": [T * H * W, 1], "counts": b"0"}, shape=(T, H)), "must be 3 integers"),
])
def test_check_names_what_is_wrong(tmp_path: Path, content: object, expected: str) -> None:
    path = write_records(tmp_path / "clip.pickle", content)
    assert expected in (check_seg(path, CLIP) or "")
    with pytest.raises(HintFileError, match=r"clip\.pickle: "):
        read_seg(path, window(0, 1))


def test_numpy_integers_and_every_protocol_load(tmp_path: Path) -> None:
    write_seg_pickle(tmp_path / "a.pickle", [("car", synthetic_masks()[0][1])])
    records = pickle.loads((tmp_path / "a.pickle").read_bytes())
    rle = records[0]["segmentation_mask_rle"]
    rle["mask_shape"] = tuple(np.int64(s) for s in rle["mask_shape"])
    rle["data"]["size"] = [np.int64(s) for s in rle["data"]["size"]]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.pickle"
        path.write_bytes(pickle.dumps(records, protocol=protocol))
        assert check_seg(path, CLIP) is None, protocol
        np.testing.assert_array_equal(read_seg(path, window(1, 2)).mask(0),
                                      synthetic_masks()[0][1][1:3])


def test_read_refuses_a_window_outside_the_clip(seg_file: tuple[Path, list[dict]]) -> None:
    with pytest.raises(HintFileError, match=r"frames \[4, 8\) are not in the clip's 6 frames"):
        read_seg(seg_file[0], window(4, 4))


def test_missing_file_is_a_hint_file_error(tmp_path: Path) -> None:
    assert "cannot be read" in (check_seg(tmp_path / "nope.pickle", CLIP) or "")
    with pytest.raises(HintFileError, match=r"nope\.pickle: cannot be read"):
        read_seg(tmp_path / "nope.pickle", window(0, 1))


# --- the restricted unpickler --------------------------------------------------------------

class CreatesFile:
    """Unpickling this with plain ``pickle`` runs ``os.system("touch <target>")``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.target}",)


def test_a_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    # The payload is live: plain pickle does create the file.
    decoy = tmp_path / "decoy"
    pickle.loads(pickle.dumps(CreatesFile(decoy)))
    assert decoy.exists()

    target = tmp_path / "pwned"
    payload = record({"size": [T * H * W, 1], "counts": b"0"})
    payload[0]["phrase"] = CreatesFile(target)  # nested deep inside a plausible file
    path = write_records(tmp_path / "clip.pickle", payload)
    problem = check_seg(path, CLIP)
    system = f"{os.system.__module__}.system"  # posix.system on Linux
    assert problem is not None and f"'{system}'" in problem and "refused" in problem
    with pytest.raises(HintFileError, match=system):
        read_seg(path, window(0, 1))
    assert not target.exists()


def test_other_globals_are_refused_too(tmp_path: Path) -> None:
    path = write_records(tmp_path / "clip.pickle", [Counter("ab")])
    assert "'collections.Counter'" in (check_seg(path, CLIP) or "")


def test_builtin_types_load_but_not_from_a_size(tmp_path: Path) -> None:
    from ctrlpost.modalities.safe_pickle import load_pickle

    values = [b"", b"ab", bytearray(b"xy"), bytearray(), {1, 2}, frozenset({3})]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.pickle"
        path.write_bytes(pickle.dumps(values, protocol=protocol))
        assert load_pickle(path) == values, protocol
    path = tmp_path / "clip.pickle"
    path.write_bytes(b"c__builtin__\nbytes\n(I1000000000000\ntR.")  # bytes(10**12): 1 TB
    assert "bytes(<size>)" in (check_seg(path, CLIP) or "")


# --- the plugin ----------------------------------------------------------------------------

def test_params_model_is_strict() -> None:
    assert SegParams() == SegParams(max_objects=100)
    with pytest.raises(ValidationError, match="extra"):
        SegParams.model_validate({"max_objects": 3, "palette": "fixed"})
    with pytest.raises(ValidationError, match="greater than or equal"):
        SegParams(max_objects=-1)
    with pytest.raises(ValidationError, match="frozen"):
        SegParams().max_objects = 3  # type: ignore[misc]
    for name, field in SegParams.model_fields.items():
        assert field.description, f"{name} has no description"


def test_modality_descriptor(seg_file: tuple[Path, list[dict]]) -> None:
    assert SEG.name == "seg" and SEG.hint_key == "control_input_seg" and SEG.hint_channels == 3
    assert ctrlpost_seg.ctrlpost_register_modalities() == [SEG]
    assert SEG.released_control_file == "seg_control.pt"
    hint_file = SEG.hint_file
    assert hint_file is not None and (hint_file.folder, hint_file.suffix) == ("seg", ".pickle")
    assert hint_file.made_by == "ctrlpost annotate RECIPE"
    assert hint_file.path(seg_file[0].parents[1], "clip") == seg_file[0]
    assert hint_file.check(seg_file[0], CLIP) is None
    masks = hint_file.read(seg_file[0], window(0, T))
    generator = SEG.build_generator(SEG.validate_params({}))
    hint = generator.render(frames(T), generator.draw(sample_rng(1, 0, 0), masks), masks)
    assert hint.shape == (T, H, W, 3)


def test_import_loads_neither_torch_transformers_cv2_nor_pycocotools() -> None:
    code = ("import ctrlpost_seg, sys; "
            "print(*(m in sys.modules for m in ('torch', 'cv2', 'pycocotools', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"] * 4


# --- synthesize: a pseudo seg file for a synthetic clip ----------------------------------


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
    clip_frames = np.stack([canvas[:, pan * t:pan * t + W] for t in range(T)])
    squares = np.zeros((T, H, W), dtype=bool)
    for t in range(T):
        squares[t, 8 + t // 2:22 + t // 2, 4 + 2 * t:18 + 2 * t] = shape
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


@pytest.mark.parametrize("pan", [0, 2])
def test_synthesize_writes_a_seg_file_the_clip_can_use(tmp_path: Path, pan: int) -> None:
    clip_frames, squares = shape_clip(pan=pan)
    clip = shape_clip_info(clip_frames)
    path = tmp_path / "seg" / "clip.pickle"
    assert SEG.hint_file is not None and SEG.hint_file.synthesize is not None
    SEG.hint_file.synthesize(clip_frames, 24.0, path)
    assert SEG.hint_file.check(path, clip) is None
    masks = SEG.hint_file.read(path, ClipWindow(clip=clip, start=5, num_frames=17))
    assert [o.phrase for o in masks.objects] == ["shape", "background"]
    shape, background = masks.mask(0), masks.mask(1)
    assert shape.shape == (17, clip.height, clip.width)
    np.testing.assert_array_equal(background, ~shape)
    window_squares = squares[5:22]
    assert (shape & window_squares).sum() >= 0.8 * window_squares.sum()
    assert (shape & ~window_squares).sum() <= 0.05 * window_squares.sum()
    # the hint paints the shape object where the square is
    generator = build_generator(SegParams())
    drawn = {"objects": [0], "hsv": [[0.5, 1.0, 1.0]], "colors": [hsv_to_rgb_uint8(0.5, 1, 1)]}
    hint = generator.render(clip_frames[5:22], drawn, masks)
    painted = hint.any(axis=-1)
    assert painted.any() and (painted & window_squares).sum() >= 0.8 * window_squares.sum()
    # a random draw paints some of the two objects
    hint = generator.render(clip_frames[5:22], generator.draw(sample_rng(0, 0, 3), masks), masks)
    assert hint.shape == (17, clip.height, clip.width, 3)


def test_synthesize_is_deterministic(tmp_path: Path) -> None:
    clip_frames, _ = shape_clip(pan=2)
    synthesize_seg(clip_frames, 24.0, tmp_path / "a.pickle")
    synthesize_seg(clip_frames.copy(), 24.0, tmp_path / "b.pickle")
    assert (tmp_path / "a.pickle").read_bytes() == (tmp_path / "b.pickle").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pickle", "b.pickle"]


def test_synthesize_of_a_clip_without_a_shape_is_all_background(tmp_path: Path) -> None:
    clip_frames, _ = shape_clip(shape=False)
    clip = shape_clip_info(clip_frames)
    synthesize_seg(clip_frames, 24.0, tmp_path / "s.pickle")
    assert check_seg(tmp_path / "s.pickle", clip) is None
    masks = read_seg(tmp_path / "s.pickle", ClipWindow(clip=clip, start=0, num_frames=24))
    assert not masks.mask(0).any() and masks.mask(1).all()
