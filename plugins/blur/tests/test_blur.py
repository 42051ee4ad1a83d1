"""The ``blur`` (vis) plugin: draws, filter chain, down-up resize, presets pinned to the pixel."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

import ctrlpost_blur
from ctrlpost.modalities import sample_rng
from ctrlpost_blur import BLUR, PRESET_DRAWS, BlurHints, BlurParams, build_generator
from ctrlpost_blur.downup import down_up


def synthetic_clip(T: int = 3, H: int = 64, W: int = 96) -> np.ndarray:
    """uint8 RGB frames [T, H, W, 3] built from integer arithmetic only (no RNG, no trig)."""
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


def reference_hint(frames: np.ndarray, drawn: dict[str, Any]) -> np.ndarray:
    """The vis hint recomputed independently, in the reference's order of operations: per frame
    inner downscale (INTER_AREA), filter(s), inner upscale (INTER_LINEAR), all uint8 in cv2; then
    the whole clip bicubic-antialias down-resized and rounded to uint8, then up-resized and
    rounded to uint8 again (torchvision's ``resize`` of a uint8 tensor, called twice)."""
    H, W = frames.shape[1:3]
    s = drawn["downscale"]
    filtered = []
    for frame in frames:
        x = cv2.resize(frame, (W // s, H // s), interpolation=cv2.INTER_AREA) if s > 1 else frame
        if drawn["bilateral"]:
            b = drawn["bilateral"]
            for _ in range(b["iterations"]):
                x = cv2.bilateralFilter(x, b["d"], b["sigma_color"], b["sigma_space"])
        if drawn["gaussian"]:
            k = drawn["gaussian"]["ksize"]
            x = cv2.GaussianBlur(x, (k, k), sigmaX=drawn["gaussian"]["sigma"], sigmaY=0)
        if s > 1:
            x = cv2.resize(x, (W, H), interpolation=cv2.INTER_LINEAR)
        assert x.dtype == np.uint8
        filtered.append(x)
    x_T_C_H_W = torch.tensor(np.stack(filtered)).permute(0, 3, 1, 2)
    f = drawn["down_up_scale"]
    for size in ((int(H / f), int(W / f)), (H, W)):
        resized = F.interpolate(x_T_C_H_W.float(), size=size, mode="bicubic", antialias=True)
        x_T_C_H_W = resized.clamp(0, 255).round().to(torch.uint8)
    return x_T_C_H_W.permute(0, 2, 3, 1).numpy()


def render(preset: str, frames: np.ndarray) -> np.ndarray:
    generator = build_generator(BlurParams(preset=preset))  # type: ignore[arg-type]
    return generator.render(frames, generator.draw(np.random.default_rng(0)))


# Pinned with cv2 4.11.0 and torch 2.13.0 on synthetic_clip(): sha256 of the hint bytes and the
# RGB values at PIXELS. They hold on the OpenCV releases the plugin declares exact (4.10, 4.11);
# bilateralFilter gives other bytes on 4.12-5.1. A change here must be deliberate; regenerate
# with `python plugins/blur/tests/test_blur.py` and explain the diff (e.g. an OpenCV or torch
# upgrade).
PIXELS = ((0, 0, 0), (0, 12, 20), (1, 32, 68), (2, 50, 30), (2, 63, 95))
PINNED: dict[str, tuple[str, list[list[int]]]] = {
    "very_low": (
        "9459a3f92a9c98c29930cc25c084f7ce1dddb333a2627802bcefd53825de87dc",
        [[45, 39, 118], [94, 79, 128], [255, 0, 93], [192, 255, 190], [225, 210, 114]],
    ),
    "low": (
        "cef66f79a7796c09d95a4498f23acbd43c884f00a1f8f1821172473ba1ac1f85",
        [[71, 71, 109], [92, 84, 112], [229, 38, 99], [177, 242, 182], [204, 183, 102]],
    ),
    "medium": (
        "d4fc091041c0f48f85ab6919fc31299b155cce34554b2f79e9c916234657bfaa",
        [[73, 74, 109], [90, 83, 110], [215, 60, 100], [145, 212, 148], [204, 181, 101]],
    ),
    "high": (
        "3134df0c9193a7910381f4ae376832b5461f670aa3861e1b2afca07fd9effc37",
        [[68, 69, 108], [90, 83, 112], [205, 86, 102], [130, 199, 132], [209, 185, 101]],
    ),
    "very_high": (
        "a18881b2a48e086be628740935ed2c8e1cc94f70078bfde4229bf909e4ffbe67",
        [[141, 129, 111], [143, 128, 111], [164, 110, 107], [147, 125, 113], [164, 113, 109]],
    ),
    "random-0": (
        "c570e6508c7a17203896042783b8c7d93064a087544e523a3ea44d5405e80b15",
        [[84, 91, 113], [96, 97, 112], [189, 109, 102], [128, 173, 123], [208, 154, 101]],
    ),
    "mixed": (
        "6bb0fa5cc6309163b98c1cec556f952d6a781dc30c795a45b85110da141c7993",
        [[100, 109, 113], [110, 110, 112], [179, 115, 104], [128, 154, 116], [195, 138, 103]],
    ),
}
# A hand-written draw that takes every branch: inner downscale with odd sizes, two bilateral
# passes, then a Gaussian.
MIXED = {
    "combination": "bilateral_gaussian",
    "downscale": 3,
    "bilateral": {"d": 21, "sigma_color": 150, "sigma_space": 75, "iterations": 2},
    "gaussian": {"ksize": 23, "sigma": 11.25},
    "down_up_scale": 5,
}
# The first draws of sample_rng(0, 0, i), i = 0, 1, 2: pins the draw order.
PINNED_DRAWS: list[dict[str, Any]] = [
    {
        "combination": "gaussian",
        "downscale": 3,
        "bilateral": None,
        "gaussian": {"ksize": 21, "sigma": 13.753080956801089},
        "down_up_scale": 13,
    },
    {
        "combination": "bilateral",
        "downscale": 1,
        "bilateral": {"d": 28, "sigma_color": 253, "sigma_space": 107, "iterations": 2},
        "gaussian": None,
        "down_up_scale": 6,
    },
    {
        "combination": "gaussian",
        "downscale": 2,
        "bilateral": None,
        "gaussian": {"ksize": 29, "sigma": 13.145757009842333},
        "down_up_scale": 17,
    },
]


def pinned_hint(name: str) -> np.ndarray:
    frames = synthetic_clip()
    if name in PRESET_DRAWS:
        return render(name, frames)
    generator = build_generator(BlurParams())
    drawn = generator.draw(sample_rng(0, 0, 0)) if name == "random-0" else MIXED
    return generator.render(frames, drawn)


def fingerprint(hint: np.ndarray) -> tuple[str, list[list[int]]]:
    digest = hashlib.sha256(hint.tobytes()).hexdigest()
    return digest, [hint[t, y, x].tolist() for t, y, x in PIXELS]


@pytest.mark.parametrize("name", list(PINNED))
def test_hint_is_pinned(name: str) -> None:
    versions = f"cv2 {cv2.__version__}, torch {torch.__version__}"
    assert fingerprint(pinned_hint(name)) == PINNED[name], f"blur/{name} changed ({versions})"


@pytest.mark.parametrize("preset", ["medium", "very_high"])
def test_preset_hint_equals_independent_recomputation(preset: str) -> None:
    frames = synthetic_clip(T=4)
    np.testing.assert_array_equal(
        render(preset, frames), reference_hint(frames, PRESET_DRAWS[preset])
    )


def test_mixed_draw_equals_independent_recomputation() -> None:
    frames = synthetic_clip(T=4)
    hint = build_generator(BlurParams()).render(frames, MIXED)
    assert hint.shape == frames.shape and hint.dtype == np.uint8
    np.testing.assert_array_equal(hint, reference_hint(frames, MIXED))
    assert np.abs(hint.astype(int) - frames).mean() > 10  # it really blurs


# Every branch of the hint: each filter combination, inner downscale 1 and > 1, the smallest and
# largest down-up factors, on 70 x 101 frames (divisible by none of the factors).
FILTERS = {
    "bilateral": ({"d": 19, "sigma_color": 180, "sigma_space": 90, "iterations": 2}, None),
    "gaussian": (None, {"ksize": 25, "sigma": 12.75}),
    "bilateral_gaussian": (
        {"d": 27, "sigma_color": 120, "sigma_space": 60, "iterations": 1},
        {"ksize": 21, "sigma": 10.5},
    ),
}
CASES = [
    {
        "combination": combination,
        "downscale": downscale,
        "bilateral": bilateral,
        "gaussian": gaussian,
        "down_up_scale": factor,
    }
    for combination, (bilateral, gaussian) in FILTERS.items()
    for downscale in (1, 3)
    for factor in (4, 17)
]


@pytest.mark.parametrize(
    "drawn", CASES, ids=lambda d: f"{d['combination']}-in{d['downscale']}-x{d['down_up_scale']}"
)
def test_hint_equals_step_by_step_recomputation(drawn: dict[str, Any]) -> None:
    frames = synthetic_clip(T=3, H=70, W=101)
    hint = build_generator(BlurParams()).render(frames, drawn)
    np.testing.assert_array_equal(hint, reference_hint(frames, drawn))


def test_rounding_between_the_resizes_is_seen() -> None:
    # Keeping float32 between the two resizes (rounding once) gives other bytes on this clip:
    # the recomputation above would catch a down-up that skipped the middle rounding.
    frames = synthetic_clip(T=2, H=70, W=101)
    x = torch.tensor(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(17, 25), mode="bicubic", antialias=True)
    x = F.interpolate(x, size=(70, 101), mode="bicubic", antialias=True)
    rounded_once = x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert (rounded_once != down_up(frames, 4)).mean() > 0.05


@pytest.mark.parametrize("chunk_frames", [1, 2, 3, 100])
def test_chunking_does_not_change_the_hint(chunk_frames: int) -> None:
    frames = synthetic_clip(T=5)
    chunked = BlurHints(BlurParams(), chunk_frames=chunk_frames).render(frames, MIXED)
    np.testing.assert_array_equal(chunked, build_generator(BlurParams()).render(frames, MIXED))


def test_presets_match_the_reference_inference_configs() -> None:
    bilateral = {
        "very_low": (15, 100, 50),
        "low": (15, 100, 50),
        "medium": (30, 150, 100),
        "high": (50, 300, 150),
        "very_high": (50, 300, 150),
    }
    downscale = {"very_low": 1, "low": 4, "medium": 2, "high": 1, "very_high": 4}
    down_up = {"very_low": 4, "low": 4, "medium": 10, "high": 16, "very_high": 16}
    assert BLUR.presets == ("random", *bilateral)
    for preset, (d, sigma_color, sigma_space) in bilateral.items():
        rng = np.random.default_rng(7)
        drawn = build_generator(BlurParams(preset=preset)).draw(rng)  # type: ignore[arg-type]
        assert drawn == {
            "combination": "bilateral",
            "downscale": downscale[preset],
            "bilateral": {
                "d": d,
                "sigma_color": sigma_color,
                "sigma_space": sigma_space,
                "iterations": 1,
            },
            "gaussian": None,
            "down_up_scale": down_up[preset],
        }
        assert rng.random() == np.random.default_rng(7).random(), "a preset consumed randomness"
        drawn["bilateral"]["d"] = 0  # a caller mutating its draw must not change the preset
    assert PRESET_DRAWS["medium"]["bilateral"]["d"] == 30


def test_random_draws_cover_reference_ranges_and_frequencies() -> None:
    generator = build_generator(BlurParams())
    rng = np.random.default_rng(12345)
    n = 20_000
    draws = [generator.draw(rng) for _ in range(n)]
    combos = Counter(d["combination"] for d in draws)
    for combo, p in {"bilateral": 0.5, "gaussian": 0.3, "bilateral_gaussian": 0.2}.items():
        assert abs(combos[combo] / n - p) < 0.02, combos  # std <= 0.0036
    downscales = Counter(d["downscale"] for d in draws)
    assert set(downscales) == {1, 2, 3, 4}
    assert all(abs(c / n - 0.25) < 0.02 for c in downscales.values()), downscales
    scales = Counter(d["down_up_scale"] for d in draws)
    assert set(scales) == set(range(4, 18))  # 4..17 inclusive, the reference's off-by-one kept
    assert all(abs(c / n - 1 / 14) < 0.02 for c in scales.values()), scales

    bilaterals = [d["bilateral"] for d in draws if d["bilateral"] is not None]
    gaussians = [d["gaussian"] for d in draws if d["gaussian"] is not None]
    assert len(bilaterals) == combos["bilateral"] + combos["bilateral_gaussian"]
    assert len(gaussians) == combos["gaussian"] + combos["bilateral_gaussian"]
    for key, low, high in [
        ("d", 15, 49),
        ("sigma_color", 100, 299),
        ("sigma_space", 50, 149),
        ("iterations", 1, 3),
    ]:
        assert {b[key] for b in bilaterals} == set(range(low, high + 1)), key
    ksizes = Counter(g["ksize"] for g in gaussians)
    assert set(ksizes) == {21, 23, 25, 27, 29}
    assert abs(ksizes[21] / len(gaussians) - 1 / 9) < 0.02  # 21 only from 21; others from 2 values
    assert abs(ksizes[29] / len(gaussians) - 2 / 9) < 0.02
    sigmas = np.array([g["sigma"] for g in gaussians])
    assert sigmas.min() >= 10.5 and sigmas.max() < 14.5
    assert sigmas.min() < 10.51 and sigmas.max() > 14.49
    assert abs(sigmas.mean() - 12.5) < 0.05


def test_draw_order_is_pinned() -> None:
    # Nine calls in the documented order, whatever the combination: a shadow generator replays them.
    generator = build_generator(BlurParams())
    rng, shadow = np.random.default_rng(2024), np.random.default_rng(2024)
    for _ in range(50):
        drawn = generator.draw(rng)
        u = shadow.random()
        downscale = int(shadow.integers(1, 5))
        d, sigma_color, sigma_space, iterations = (
            int(shadow.integers(lo, hi)) for lo, hi in [(15, 50), (100, 300), (50, 150), (1, 4)]
        )
        ksize = int(shadow.integers(21, 30))
        sigma = shadow.uniform(10.5, 14.5)
        scale = int(shadow.integers(4, 18))
        combination = "bilateral" if u < 0.5 else "gaussian" if u < 0.8 else "bilateral_gaussian"
        assert drawn == {
            "combination": combination,
            "downscale": downscale,
            "bilateral": {
                "d": d,
                "sigma_color": sigma_color,
                "sigma_space": sigma_space,
                "iterations": iterations,
            }
            if "bilateral" in combination
            else None,
            "gaussian": {"ksize": ksize | 1, "sigma": sigma} if "gaussian" in combination else None,
            "down_up_scale": scale,
        }
    assert [generator.draw(sample_rng(0, 0, i)) for i in range(3)] == PINNED_DRAWS


def test_same_sample_same_hint_and_other_index_other_draw() -> None:
    frames = synthetic_clip()
    generator = build_generator(BlurParams())
    first = generator.render(frames, generator.draw(sample_rng(11, 2, 5)))
    again = generator.render(frames, generator.draw(sample_rng(11, 2, 5)))
    np.testing.assert_array_equal(first, again)
    assert generator.draw(sample_rng(11, 2, 5)) != generator.draw(sample_rng(11, 2, 6))
    assert generator.draw(sample_rng(11, 2, 5)) != generator.draw(sample_rng(11, 3, 5))


def test_draw_is_plain_json() -> None:
    generator = build_generator(BlurParams())
    for i in range(20):
        drawn = generator.draw(sample_rng(0, 0, i))
        assert json.loads(json.dumps(drawn)) == drawn


def test_render_rejects_bad_frames() -> None:
    generator = build_generator(BlurParams())
    with pytest.raises(ValueError, match="uint8 RGB"):
        generator.render(synthetic_clip().astype(np.float32), MIXED)
    with pytest.raises(ValueError, match="uint8 RGB"):
        generator.render(synthetic_clip()[0], MIXED)


def test_params_model_is_strict() -> None:
    assert BlurParams().preset == "random"
    with pytest.raises(ValidationError, match="extra"):
        BlurParams.model_validate({"preset": "low", "sigma": 3})
    with pytest.raises(ValidationError, match="preset"):
        BlurParams.model_validate({"preset": "none"})
    params = BlurParams()
    with pytest.raises(ValidationError, match="frozen"):
        params.preset = "low"  # type: ignore[misc]
    for name, field in BlurParams.model_fields.items():
        assert field.description, f"{name} has no description"


def test_modality_descriptor() -> None:
    assert BLUR.name == "blur"
    assert BLUR.hint_key == "control_input_vis" and BLUR.hint_channels == 3
    assert ctrlpost_blur.ctrlpost_register_modalities() == [BLUR]
    params = BLUR.validate_params({"preset": "medium"})
    hint = BLUR.make_hint(synthetic_clip(), params, np.random.default_rng(0))
    np.testing.assert_array_equal(hint, render("medium", synthetic_clip()))


def test_import_loads_neither_torch_nor_cv2() -> None:
    code = "import ctrlpost_blur, sys; print('torch' in sys.modules, 'cv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


if __name__ == "__main__":  # prints fresh pins after a deliberate change
    for name in PINNED:
        print(f"    {name!r}: {fingerprint(pinned_hint(name))!r},")
    print([build_generator(BlurParams()).draw(sample_rng(0, 0, i)) for i in range(3)])
