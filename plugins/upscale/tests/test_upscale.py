"""The ``upscale`` plugin: crop geometry, draws, the degraded hint pinned to the pixel, the
target."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

import ctrlpost_upscale
from ctrlpost.modalities import sample_rng
from ctrlpost_upscale import UPSCALE, UpscaleHints, UpscaleParams, build_generator, locate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def synthetic_clip(T: int = 3, H: int = 70, W: int = 101) -> np.ndarray:
    """uint8 RGB frames [T, H, W, 3] from integer arithmetic only: gradients, a fine checker and
    a moving box, so that shrinking really loses detail."""
    t = np.arange(T)[:, None, None]
    y = np.arange(H)[None, :, None]
    x = np.arange(W)[None, None, :]
    r = (40 + 3 * x + y + 5 * t) % 256
    g = np.where((x // 2 + y // 2 + t) % 2 == 0, 30, 220) + 0 * t
    b = (60 + np.abs((x + 2 * t) % 20 - 10) * 6 + np.abs((y + t) % 16 - 8) * 9) % 256
    box = (y >= H // 4 + t) & (y < H // 2 + t) & (x >= W // 5 + 2 * t) & (x < W // 2 + 2 * t)
    rgb = np.stack(np.broadcast_arrays(r, g, b), axis=-1)
    rgb = np.where(box[..., None], 255 - rgb, rgb)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def recompute_hint(frames: np.ndarray, top: int, left: int, crop_w: int, crop_h: int,
                   factor: int) -> np.ndarray:
    """The hint recomputed step by step in the reference's order, the whole clip in one call:
    crop; antialiased bicubic shrink to int(side * (1/factor)) of the crop size, clamped and
    rounded to uint8; antialiased bilinear enlargement to the crop size, rounded to uint8."""
    crop = torch.tensor(frames[:, top:top + crop_h, left:left + crop_w]).permute(0, 3, 1, 2)
    small_size = (int(crop_h * (1 / factor)), int(crop_w * (1 / factor)))
    small = F.interpolate(crop.float(), size=small_size, mode="bicubic", antialias=True,
                          align_corners=False)
    small = small.clamp(0, 255).round().to(torch.uint8)
    if small_size == (crop_h, crop_w):
        return small.permute(0, 2, 3, 1).numpy()
    up = F.interpolate(small.float(), size=(crop_h, crop_w), mode="bilinear", antialias=True,
                       align_corners=False)
    return up.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def drawn(top_fraction: float, left_fraction: float, downscale: int) -> dict[str, Any]:
    return {"top_fraction": top_fraction, "left_fraction": left_fraction, "downscale": downscale}


SMALL = UpscaleParams(crop_size=(48, 32), downscale_factors=(6, 3, 2, 1),
                      downscale_probabilities=(0.25, 0.25, 0.25, 0.25))


# -- geometry -------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height", "crop"), [
    (1920, 1080, (1280, 704)), (3840, 2160, (1280, 704)), (1280, 720, (1280, 704)),
    (1440, 1080, (960, 704)), (640, 480, (960, 704)), (1080, 1080, (960, 960)),
    (1080, 1440, (704, 960)), (1080, 1920, (704, 1280)), (2560, 1080, (1280, 704)),
])
def test_crop_size_is_the_reference_720_bucket_of_the_aspect_ratio(
        width: int, height: int, crop: tuple[int, int]) -> None:
    assert ctrlpost_upscale.crop_size(width, height, UpscaleParams()) == crop
    assert ctrlpost_upscale.crop_size(width, height, UpscaleParams(crop_size=(64, 48))) == (64, 48)


def test_fractions_become_offsets_uniformly() -> None:
    # 1080 - 704 + 1 = 377 valid tops, 1920 - 1280 + 1 = 641 valid lefts.
    params = UpscaleParams()
    assert locate(1080, 1920, drawn(0.0, 0.0, 3), params) == ctrlpost_upscale.Crop(
        top=0, left=0, height=704, width=1280, crop_height=704, crop_width=1280,
        small_height=234, small_width=426)
    box = locate(1080, 1920, drawn(0.999999, 0.5, 6), params)
    assert (box.top, box.left) == (376, 320)
    assert (box.small_height, box.small_width) == (117, 213)
    assert locate(1080, 1920, drawn(1.0, 1.0, 2), params).top == 376  # clamped, never past
    box = locate(704, 1280, drawn(0.7, 0.3, 2), params)
    assert (box.top, box.left, box.small_height, box.small_width) == (0, 0, 352, 640)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        locate(1080, 1920, drawn(-0.1, 0.0, 2), params)


def test_frame_smaller_than_the_crop_is_cropped_whole_and_stretched() -> None:
    # As the reference: offset 0, the crop is the whole (short) side, the shrink and the
    # enlargement use the configured crop size, so the hint is larger than the target.
    frames = synthetic_clip(T=2, H=26, W=60)
    generator = build_generator(SMALL)
    draw = drawn(0.9, 0.9, 3)
    box = generator.crop(frames, draw)
    assert (box.top, box.left, box.height, box.width) == (0, 11, 26, 48)  # int(0.9 * 13)
    target = generator.target(frames, draw)
    np.testing.assert_array_equal(target, frames[:, :, 11:59])
    hint = generator.render(frames, draw)
    assert hint.shape == (2, 32, 48, 3)
    crop = torch.tensor(target).permute(0, 3, 1, 2).float()
    small = F.interpolate(crop, size=(10, 16), mode="bicubic", antialias=True)
    small = small.clamp(0, 255).round()
    up = F.interpolate(small, size=(32, 48), mode="bilinear", antialias=True).round()
    np.testing.assert_array_equal(hint, up.to(torch.uint8).permute(0, 2, 3, 1).numpy())


# -- hint and target ------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [6, 3, 2])
def test_full_size_hint_equals_step_by_step_recomputation(factor: int) -> None:
    frames = synthetic_clip(T=2, H=1080, W=1920)
    generator = build_generator(UpscaleParams())
    draw = drawn(0.25, 0.8, factor)
    top, left = int(0.25 * 377), int(0.8 * 641)
    hint = generator.render(frames, draw)
    assert hint.shape == (2, 704, 1280, 3) and hint.dtype == np.uint8
    np.testing.assert_array_equal(hint, recompute_hint(frames, top, left, 1280, 704, factor))
    target = generator.target(frames, draw)
    np.testing.assert_array_equal(target, frames[:, top:top + 704, left:left + 1280])
    assert np.abs(hint.astype(int) - target).mean() > 10  # it really degrades


@pytest.mark.parametrize("factor", [6, 3, 2, 1])
@pytest.mark.parametrize(("top_fraction", "left_fraction"), [(0.0, 0.0), (0.999, 0.999),
                                                             (0.4, 0.7)])
def test_hint_and_target_for_every_factor_and_both_ends(factor: int, top_fraction: float,
                                                        left_fraction: float) -> None:
    frames = synthetic_clip(T=3, H=70, W=101)
    generator = build_generator(SMALL)
    draw = drawn(top_fraction, left_fraction, factor)
    top, left = int(top_fraction * 39), int(left_fraction * 54)  # 70-32+1, 101-48+1 offsets
    np.testing.assert_array_equal(generator.target(frames, draw),
                                  frames[:, top:top + 32, left:left + 48])
    np.testing.assert_array_equal(generator.render(frames, draw),
                                  recompute_hint(frames, top, left, 48, 32, factor))


def test_factor_one_leaves_the_crop_as_it_is() -> None:
    frames = synthetic_clip()
    generator = build_generator(SMALL)
    draw = drawn(0.5, 0.5, 1)
    np.testing.assert_array_equal(generator.render(frames, draw), generator.target(frames, draw))


def test_bilinear_antialias_is_seen() -> None:
    # Plain bilinear (antialias off) for the enlargement gives other bytes on some pixels: the
    # recomputation above would catch an enlargement without antialias.
    frames = synthetic_clip(T=2, H=704, W=1280)
    small = F.interpolate(torch.tensor(frames).permute(0, 3, 1, 2).float(), size=(117, 213),
                          mode="bicubic", antialias=True).clamp(0, 255).round()
    plain = F.interpolate(small, size=(704, 1280), mode="bilinear", antialias=False).round()
    plain_hint = plain.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    hint = build_generator(UpscaleParams()).render(frames, drawn(0.0, 0.0, 6))
    differs = hint != plain_hint
    assert differs.any() and np.abs(hint.astype(int) - plain_hint).max() == 1


@pytest.mark.parametrize("chunk_frames", [1, 2, 3, 100])
def test_chunking_does_not_change_the_hint(chunk_frames: int) -> None:
    frames = synthetic_clip(T=5)
    draw = drawn(0.3, 0.6, 3)
    chunked = UpscaleHints(SMALL, chunk_frames=chunk_frames).render(frames, draw)
    np.testing.assert_array_equal(chunked, build_generator(SMALL).render(frames, draw))


# Pinned with torch 2.13.0 on synthetic_clip(): sha256 of the hint bytes and the RGB values at
# PIXELS. A change here must be deliberate; regenerate with
# `python plugins/upscale/tests/test_upscale.py` and explain the diff (e.g. a torch upgrade).
PIXELS = ((0, 0, 0), (0, 12, 20), (1, 31, 47), (2, 20, 30), (2, 5, 40))
PINNED: dict[int, tuple[str, list[list[int]]]] = {
    6: (
        "a3664d83d9d9c9078b739d1d5a099d473ffc14f550993e7c9d6e68556b023c31",
        [[150, 126, 133], [196, 125, 114], [57, 125, 122], [56, 125, 129], [21, 125, 138]],
    ),
    3: (
        "4759ca2c2234520bebff10007194740464d95b22535b7c18ae661140465f20f4",
        [[153, 121, 117], [211, 126, 91], [64, 122, 131], [13, 125, 145], [26, 125, 150]],
    ),
    2: (
        "719bb2277b097c872597116383435cb6cffde1392ba0d5e081026d8d2d2e73b8",
        [[149, 111, 107], [218, 125, 82], [66, 111, 139], [9, 125, 146], [26, 125, 151]],
    ),
}


def pinned_hint(factor: int) -> np.ndarray:
    return build_generator(SMALL).render(synthetic_clip(), drawn(0.3, 0.6, factor))


def fingerprint(hint: np.ndarray) -> tuple[str, list[list[int]]]:
    digest = hashlib.sha256(hint.tobytes()).hexdigest()
    return digest, [hint[t, y, x].tolist() for t, y, x in PIXELS]


@pytest.mark.parametrize("factor", [6, 3, 2])
def test_hint_is_pinned(factor: int) -> None:
    assert fingerprint(pinned_hint(factor)) == PINNED[factor], f"torch {torch.__version__}"


# -- draws ----------------------------------------------------------------------------------


def test_draws_follow_the_reference_distribution() -> None:
    generator = build_generator(UpscaleParams())
    rng = np.random.default_rng(12345)
    n = 20_000
    draws = [generator.draw(rng) for _ in range(n)]
    factors = Counter(d["downscale"] for d in draws)
    assert set(factors) == {6, 3, 2}
    for factor, p in {6: 0.3, 3: 0.5, 2: 0.2}.items():
        assert abs(factors[factor] / n - p) < 0.015, factors  # std <= 0.0036
    # 710 - 704 + 1 = 7 valid tops, 1290 - 1280 + 1 = 11 valid lefts: uniform, both ends hit
    boxes = [locate(710, 1290, d, UpscaleParams()) for d in draws]
    tops, lefts = Counter(b.top for b in boxes), Counter(b.left for b in boxes)
    assert set(tops) == set(range(7)) and set(lefts) == set(range(11))
    assert all(abs(c / n - 1 / 7) < 0.015 for c in tops.values()), tops
    assert all(abs(c / n - 1 / 11) < 0.015 for c in lefts.values()), lefts


def test_draw_order_is_pinned() -> None:
    params = UpscaleParams(downscale_factors=(4, 2, 8), downscale_probabilities=(0.1, 0.0, 0.9))
    generator = build_generator(params)
    rng, shadow = np.random.default_rng(2024), np.random.default_rng(2024)
    for _ in range(200):
        top, left, u = shadow.random(), shadow.random(), shadow.random()
        assert generator.draw(rng) == drawn(top, left, 4 if u < 0.1 else 8)
    assert [build_generator(UpscaleParams()).draw(sample_rng(0, 0, i)) for i in range(3)] \
        == PINNED_DRAWS


# The first draws of sample_rng(0, 0, i), i = 0, 1, 2: pins the draw order.
PINNED_DRAWS: list[dict[str, Any]] = [
    drawn(0.6369616873214543, 0.2697867137638703, 6),
    drawn(0.4492388188116676, 0.39104163833546157, 3),
    drawn(0.6225429408302849, 0.42729744183567553, 3),
]


def test_same_sample_same_draw_and_draw_is_plain_json() -> None:
    generator = build_generator(UpscaleParams())
    assert generator.draw(sample_rng(11, 2, 5)) == generator.draw(sample_rng(11, 2, 5))
    assert generator.draw(sample_rng(11, 2, 5)) != generator.draw(sample_rng(11, 2, 6))
    for i in range(20):
        draw = generator.draw(sample_rng(0, 0, i))
        assert json.loads(json.dumps(draw)) == draw
        assert type(draw["downscale"]) is int and type(draw["top_fraction"]) is float


def test_render_and_target_reject_bad_frames() -> None:
    generator = build_generator(SMALL)
    draw = drawn(0.0, 0.0, 2)
    for bad in (synthetic_clip().astype(np.float32), synthetic_clip()[0]):
        with pytest.raises(ValueError, match="uint8 RGB"):
            generator.render(bad, draw)
        with pytest.raises(ValueError, match="uint8 RGB"):
            generator.target(bad, draw)


# -- params and descriptor ------------------------------------------------------------------


def test_params_defaults_are_the_references() -> None:
    params = UpscaleParams()
    assert params.crop_size is None
    assert params.downscale_factors == (6, 3, 2)
    assert params.downscale_probabilities == (0.3, 0.5, 0.2)
    for name, field in UpscaleParams.model_fields.items():
        assert field.description, f"{name} has no description"


@pytest.mark.parametrize(("raw", "match"), [
    ({"scale": 2}, "extra"),
    ({"downscale_factors": [6, 3]}, "same, non-zero length"),
    ({"downscale_factors": [], "downscale_probabilities": []}, "same, non-zero length"),
    ({"downscale_probabilities": [0.3, 0.5, 0.3]}, "sum to 1"),
    ({"downscale_probabilities": [1.2, -0.2, 0.0]}, "sum to 1"),
    ({"downscale_factors": [6, 6, 2]}, "distinct"),
    ({"downscale_factors": [0, 3, 2]}, "distinct integers in 1..64"),
    ({"crop_size": [0, 704]}, "greater than 0"),
    ({"crop_size": [64, 4]}, "too small"),
])
def test_params_model_is_strict(raw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        UpscaleParams.model_validate(raw)


def test_readme_example_validates() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    recipe = tomllib.loads(readme.split("```toml\n")[1].split("```")[0])
    assert recipe["control"][0]["modality"] == "upscale"
    assert UPSCALE.validate_params(recipe["control"][0]["params"]) == UpscaleParams()


def test_params_are_frozen() -> None:
    params = UpscaleParams()
    with pytest.raises(ValidationError, match="frozen"):
        params.crop_size = (64, 64)  # type: ignore[misc]


def test_modality_descriptor() -> None:
    assert UPSCALE.name == "upscale" and UPSCALE.hint_key == "control_input_upscale"
    assert UPSCALE.hint_channels == 3 and UPSCALE.replaces_video and UPSCALE.hint_file is None
    assert UPSCALE.released_control_file == "4kupscaler_control.pt"
    assert ctrlpost_upscale.ctrlpost_register_modalities() == [UPSCALE]
    assert UPSCALE.exact_on[0].holds() is (torch.__version__.startswith("2.13."))
    params = UPSCALE.validate_params({"crop_size": [48, 32]})
    frames = synthetic_clip()
    generator = UPSCALE.build_generator(params)
    draw = generator.draw(np.random.default_rng(0))
    np.testing.assert_array_equal(UPSCALE.make_hint(frames, params, np.random.default_rng(0)),
                                  generator.render(frames, draw))


def test_import_loads_neither_torch_nor_cv2() -> None:
    code = "import ctrlpost_upscale, sys; print('torch' in sys.modules, 'cv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


if __name__ == "__main__":  # prints fresh pins after a deliberate change
    for factor in (6, 3, 2):
        print(f"    {factor}: {fingerprint(pinned_hint(factor))!r},")
    print([build_generator(UpscaleParams()).draw(sample_rng(0, 0, i)) for i in range(3)])
