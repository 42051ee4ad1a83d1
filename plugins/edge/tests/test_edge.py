"""The ``edge`` plugin: Canny hints, threshold draws, presets pinned to the pixel."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

import ctrlpost_edge
from ctrlpost.modalities import sample_rng
from ctrlpost_edge import EDGE, EdgeParams, build_generator


def synthetic_clip(T: int = 3, H: int = 64, W: int = 96) -> np.ndarray:
    """uint8 RGB frames [T, H, W, 3] built from integer arithmetic only (no RNG, no trig):
    gradients, a triangle-wave texture, three boxes of rising contrast and a moving disk."""
    t = np.arange(T)[:, None, None]
    y = np.arange(H)[None, :, None]
    x = np.arange(W)[None, None, :]
    r = 40 + x * 2 + 0 * y + 0 * t
    g = 30 + y * 3 + 0 * x + 0 * t
    b = 60 + np.abs((x + 2 * t) % 20 - 10) * 6 + np.abs((y + t) % 16 - 8) * 3
    rgb = np.stack(np.broadcast_arrays(r, g, b), axis=-1)
    for k, step in enumerate((15, 40, 90)):
        box = (y >= 6 + 18 * k + t) & (y < 18 + 18 * k + t) & (x >= 8 + 2 * t) & (x < 40 + 2 * t)
        rgb = rgb + np.where(box[..., None], step, 0)
    disk = (y - 32) ** 2 + (x - 68 + 3 * t) ** 2 < 13**2
    rgb = np.where(disk[..., None], rgb + np.array([150, -150, 0]), rgb)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def render(preset: str, frames: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    generator = build_generator(EdgeParams(preset=preset))  # type: ignore[arg-type]
    return generator.render(frames, generator.draw(rng or np.random.default_rng(0)))


# Pinned with cv2 5.0.0 on synthetic_clip(): sha256 of the hint bytes, edge pixels per frame,
# and the red channel at PIXELS. A change here must be deliberate; regenerate with
# `python plugins/edge/tests/test_edge.py` and explain the diff (e.g. an OpenCV upgrade).
PIXELS = ((1, 32, 1), (1, 0, 29), (0, 17, 29), (0, 35, 12), (2, 25, 13), (0, 53, 40))
PINNED = {
    "none": (
        "49cf70ad1136d1ed201972646bcc83945ef0abd1a9f8da23979bd5d306f026ea",
        [502, 493, 492],
        [0, 255, 255, 255, 255, 255],
    ),
    "very_low": (
        "49cf70ad1136d1ed201972646bcc83945ef0abd1a9f8da23979bd5d306f026ea",
        [502, 493, 492],
        [0, 255, 255, 255, 255, 255],
    ),
    "low": (
        "cfe532b8838762fe389bb02f63fffa8aacdd4338a5b29a4090d0bb4cae954c40",
        [316, 312, 290],
        [0, 0, 255, 255, 255, 255],
    ),
    "medium": (
        "10afe6bb2aeff94ec6a7d16ee610c08d63e7520dad9f3aaaf883cf011e943135",
        [249, 248, 248],
        [0, 0, 0, 255, 255, 255],
    ),
    "high": (
        "5f96ef48dad35be6e424961c6b595d93cae27e6c4bbc0d3563fecba7f5dfab95",
        [165, 206, 206],
        [0, 0, 0, 0, 255, 255],
    ),
    "very_high": (
        "bb57dd8fbca561c8fd03b558d9cf6feaff6cff8315a8d7fb0b55b463bbdf4ba6",
        [165, 164, 164],
        [0, 0, 0, 0, 0, 255],
    ),
}
# The first draws of sample_rng(0, 0, i), i = 0, 1, 2: pins the draw order.
PINNED_DRAWS = [
    {"preset": "random", "lower": 88, "upper": 201},
    {"preset": "random", "lower": 91, "upper": 185},
    {"preset": "random", "lower": 37, "upper": 149},
]


def fingerprint(hint: np.ndarray) -> tuple[str, list[int], list[int]]:
    digest = hashlib.sha256(hint.tobytes()).hexdigest()
    counts = (hint[..., 0] == 255).sum(axis=(1, 2)).tolist()
    return digest, counts, [int(hint[t, y, x, 0]) for t, y, x in PIXELS]


@pytest.mark.parametrize("preset", sorted(PINNED))
def test_preset_hint_is_pinned(preset: str) -> None:
    hint = render(preset, synthetic_clip())
    assert fingerprint(hint) == PINNED[preset], f"edge/{preset} changed (cv2 {cv2.__version__})"


def test_presets_use_reference_thresholds_and_no_randomness() -> None:
    expected = {
        "none": (20, 50),
        "very_low": (20, 50),
        "low": (50, 100),
        "medium": (100, 200),
        "high": (200, 300),
        "very_high": (300, 400),
    }
    for preset, (lower, upper) in expected.items():
        rng = np.random.default_rng(7)
        drawn = build_generator(EdgeParams(preset=preset)).draw(rng)  # type: ignore[arg-type]
        assert (drawn["lower"], drawn["upper"]) == (lower, upper)
        assert rng.random() == np.random.default_rng(7).random(), "a preset consumed randomness"


@pytest.mark.parametrize("index", range(4))
def test_hint_is_cv2_canny_on_rgb_replicated(index: int) -> None:
    frames = synthetic_clip()
    generator = build_generator(EdgeParams())
    drawn = generator.draw(sample_rng(3, 0, index))
    hint = generator.render(frames, drawn)
    assert hint.shape == (*frames.shape[:3], 3) and hint.dtype == np.uint8
    assert set(np.unique(hint).tolist()) <= {0, 255}
    for t, frame in enumerate(frames):
        expected = cv2.Canny(frame, drawn["lower"], drawn["upper"])
        for c in range(3):
            np.testing.assert_array_equal(hint[t, :, :, c], expected)
    # Canny directly on RGB is not Canny on grey: guards against a silent cvtColor.
    grey = cv2.Canny(cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY), drawn["lower"], drawn["upper"])
    assert not np.array_equal(hint[0, :, :, 0], grey)


def test_render_handles_non_contiguous_frames() -> None:
    frames = synthetic_clip(T=2)
    strided = np.asfortranarray(frames)
    np.testing.assert_array_equal(render("medium", strided), render("medium", frames))


def test_render_rejects_bad_frames() -> None:
    generator = build_generator(EdgeParams())
    with pytest.raises(ValueError, match="uint8 RGB"):
        generator.render(synthetic_clip().astype(np.float32), {"lower": 20, "upper": 50})
    with pytest.raises(ValueError, match="uint8 RGB"):
        generator.render(synthetic_clip()[..., :1], {"lower": 20, "upper": 50})


def test_random_draws_cover_reference_ranges_uniformly() -> None:
    generator = build_generator(EdgeParams())
    rng = np.random.default_rng(12345)
    draws = [generator.draw(rng) for _ in range(20_000)]
    lowers = Counter(d["lower"] for d in draws)
    diffs = Counter(d["upper"] - d["lower"] for d in draws)
    assert set(lowers) == set(range(20, 100))  # 80 values, both ends reached
    assert set(diffs) == set(range(50, 150))  # 100 values (99 + 149 < 255: the cap never bites)
    # 250 (lower) and 200 (diff) expected per value; +-40% is over 6 standard deviations.
    assert all(150 <= n <= 350 for n in lowers.values()), lowers
    assert all(120 <= n <= 280 for n in diffs.values()), diffs


def test_upper_threshold_is_capped_at_255() -> None:
    generator = build_generator(EdgeParams(lower_range=(200, 240)))
    rng, shadow = np.random.default_rng(0), np.random.default_rng(0)
    uppers = []
    for _ in range(2_000):
        drawn = generator.draw(rng)
        lower = int(shadow.integers(200, 240, endpoint=True))
        diff = int(shadow.integers(50, 149, endpoint=True))
        assert (drawn["lower"], drawn["upper"]) == (lower, min(255, lower + diff))
        uppers.append(drawn["upper"])
    assert max(uppers) == 255 and min(uppers) < 255


def test_draw_order_is_pinned() -> None:
    # Exactly two calls, lower then diff, both inclusive: a shadow generator replays them.
    generator = build_generator(EdgeParams())
    rng, shadow = np.random.default_rng(2024), np.random.default_rng(2024)
    for _ in range(100):
        lower = int(shadow.integers(20, 99, endpoint=True))
        diff = int(shadow.integers(50, 149, endpoint=True))
        assert generator.draw(rng) == {"preset": "random", "lower": lower, "upper": lower + diff}
    assert [generator.draw(sample_rng(0, 0, i)) for i in range(3)] == PINNED_DRAWS


def test_same_sample_same_hint_and_other_index_other_draw() -> None:
    frames = synthetic_clip()
    generator = build_generator(EdgeParams())
    first = generator.render(frames, generator.draw(sample_rng(11, 2, 5)))
    again = generator.render(frames, generator.draw(sample_rng(11, 2, 5)))
    np.testing.assert_array_equal(first, again)
    draws = [generator.draw(sample_rng(11, 2, i)) for i in range(10)]
    assert len({(d["lower"], d["upper"]) for d in draws}) >= 8
    assert generator.draw(sample_rng(11, 2, 5)) != generator.draw(sample_rng(11, 2, 6))


def test_draw_is_plain_json() -> None:
    drawn = build_generator(EdgeParams()).draw(sample_rng(0, 0, 0))
    assert json.loads(json.dumps(drawn)) == drawn
    assert all(type(v) in (int, str) for v in drawn.values())


def test_params_model_is_strict() -> None:
    assert EdgeParams() == EdgeParams(preset="random", lower_range=(20, 99), diff_range=(50, 149))
    with pytest.raises(ValidationError, match="extra"):
        EdgeParams.model_validate({"preset": "low", "sigma": 3})
    with pytest.raises(ValidationError, match="preset"):
        EdgeParams.model_validate({"preset": "ultra"})
    with pytest.raises(ValidationError, match="low <= high"):
        EdgeParams.model_validate({"lower_range": [99, 20]})
    params = EdgeParams()
    with pytest.raises(ValidationError, match="frozen"):
        params.preset = "low"  # type: ignore[misc]
    assert EdgeParams.model_validate({"lower_range": [30, 40]}).lower_range == (30, 40)
    for name, field in EdgeParams.model_fields.items():
        assert field.description, f"{name} has no description"


def test_modality_descriptor() -> None:
    assert EDGE.name == "edge"
    assert EDGE.hint_key == "control_input_edge" and EDGE.hint_channels == 3
    assert EDGE.presets == ("random", "none", "very_low", "low", "medium", "high", "very_high")
    assert ctrlpost_edge.ctrlpost_register_modalities() == [EDGE]
    params = EDGE.validate_params({"preset": "medium"})
    hint = EDGE.make_hint(synthetic_clip(), params, np.random.default_rng(0))
    np.testing.assert_array_equal(hint, render("medium", synthetic_clip()))


def test_import_loads_neither_torch_nor_cv2() -> None:
    code = "import ctrlpost_edge, sys; print('torch' in sys.modules, 'cv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


if __name__ == "__main__":  # prints fresh pins after a deliberate change
    for preset in PINNED:
        print(f"    {preset!r}: {fingerprint(render(preset, synthetic_clip()))!r},")
    print([build_generator(EdgeParams()).draw(sample_rng(0, 0, i)) for i in range(3)])
