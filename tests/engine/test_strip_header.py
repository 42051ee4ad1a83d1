"""Validation strips name their columns in a header row drawn into the PNG, above columns whose
pixels are the frames themselves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctrlpost.engine.generate import ClipInputs
from ctrlpost.engine.scoring import GAP, HEADER_HEIGHT, LABEL_HEIGHT, Scorer, strip_label
from ctrlpost.modalities import registry

SHOWN = 3  # frames per strip in these tests: rows of the body


def clip_of(frames_T_H_W_C: np.ndarray) -> ClipInputs:
    video = torch.from_numpy(frames_T_H_W_C).permute(3, 0, 1, 2)
    hint = torch.from_numpy(255 - frames_T_H_W_C).permute(3, 0, 1, 2)  # unlike the video
    _, H, W, _ = frames_T_H_W_C.shape
    return ClipInputs(name="c", index=0, video_3_T_H_W=video, hint_C_T_H_W=hint,
                      text_L_D=torch.zeros(4, 8), padding_mask_1_H_W=torch.zeros(1, H, W),
                      fps=24.0, hint_draw={"preset": "medium", "lower": 100, "upper": 200})


def scorer(modality: str, params: dict[str, object]) -> Scorer:
    found = registry.get_modality(modality)
    return Scorer(found, found.validate_params(params))


def frames(H: int, W: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (5, H, W, 3), dtype=np.uint8)


def columns(image: np.ndarray, count: int, width: int) -> list[np.ndarray]:
    """The strip cut into its ``count`` columns (the gaps between them dropped)."""
    return [image[:, i * (width + GAP):i * (width + GAP) + width] for i in range(count)]


def lit_box(band: np.ndarray) -> tuple[slice, slice] | None:
    rows, cols = np.nonzero(band.max(axis=-1) > 0)
    if rows.size == 0:
        return None
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


def drawn_alone(name: str, width: int) -> np.ndarray:
    """``name`` as cv2 draws it on a black band of the header's height, cropped to its ink."""
    import cv2

    band = np.zeros((HEADER_HEIGHT, width, 3), np.uint8)
    cv2.putText(band, name, (2, HEADER_HEIGHT - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                (255, 255, 255), 1, cv2.LINE_AA)
    box = lit_box(band)
    assert box is not None
    return band[box]


def test_the_header_names_each_column_above_the_unchanged_frames() -> None:
    H, W = 64, 160  # wide enough for every name at the header's first size
    generated = frames(H, W, seed=1)
    clip = clip_of(frames(H, W, seed=2))
    edge = scorer("edge", {"preset": "medium"})
    image = edge.strip(generated, clip, frames=SHOWN, label=strip_label("c", {"f1": 0.5}))
    assert image.shape == (LABEL_HEIGHT + HEADER_HEIGHT + SHOWN * H + (SHOWN - 1) * GAP,
                           4 * W + 3 * GAP, 3)

    header = image[LABEL_HEIGHT:LABEL_HEIGHT + HEADER_HEIGHT]
    names = ["hint", "generated", "hint of generated", "real"]
    for name, cell in zip(names, columns(header, 4, W), strict=True):
        box = lit_box(cell)
        assert box is not None, f"no header text over {name!r}"
        np.testing.assert_array_equal(cell[box], drawn_alone(name, W))
        middle = (box[1].start + box[1].stop) / 2
        assert abs(middle - W / 2) <= 2  # centred over its column
    for i in range(1, 4):  # the gaps between the names stay dark
        assert not header[:, i * (W + GAP) - GAP:i * (W + GAP)].any()

    body = image[LABEL_HEIGHT + HEADER_HEIGHT:]
    picks = [0, 2, 4]  # 3 of 5 frames, spread
    hint = clip.hint_C_T_H_W.permute(1, 2, 3, 0).numpy()
    real = clip.video_3_T_H_W.permute(1, 2, 3, 0).numpy()
    hint_of_generated = edge.hint_of(generated, clip)
    assert hint_of_generated is not None
    for row, t in enumerate(picks):
        cells = columns(body[row * (H + GAP):row * (H + GAP) + H], 4, W)
        np.testing.assert_array_equal(cells[0], hint[t])
        np.testing.assert_array_equal(cells[1], generated[t])
        np.testing.assert_array_equal(cells[2], hint_of_generated[t])  # edge maps are RGB
        np.testing.assert_array_equal(cells[3], real[t])


def test_a_strip_without_hint_of_generated_names_its_three_columns() -> None:
    H, W = 32, 120
    depth = scorer("depth", {})
    generated = frames(H, W, seed=3)
    clip = clip_of(frames(H, W, seed=4))
    image = depth.strip(generated, clip, frames=SHOWN, label="c")
    assert image.shape[1] == 3 * W + 2 * GAP
    header = image[LABEL_HEIGHT:LABEL_HEIGHT + HEADER_HEIGHT]
    for name, cell in zip(["hint", "generated", "real"], columns(header, 3, W), strict=True):
        box = lit_box(cell)
        assert box is not None
        np.testing.assert_array_equal(cell[box], drawn_alone(name, W))
    body = image[LABEL_HEIGHT + HEADER_HEIGHT:]
    np.testing.assert_array_equal(columns(body[:H], 3, W)[1], generated[0])
    np.testing.assert_array_equal(columns(body[:H], 3, W)[2],
                                  clip.video_3_T_H_W[:, 0].permute(1, 2, 0).numpy())


@pytest.mark.parametrize("width", [24, 40, 60])
def test_names_stay_inside_narrow_columns(width: int) -> None:
    edge = scorer("edge", {"preset": "medium"})
    image = edge.strip(frames(16, width, seed=5), clip_of(frames(16, width, seed=6)),
                       frames=SHOWN, label="c")
    header = image[LABEL_HEIGHT:LABEL_HEIGHT + HEADER_HEIGHT]
    for i, cell in enumerate(columns(header, 4, width)):
        box = lit_box(cell)
        assert box is not None, f"column {i} has no name"
        assert box[1].start >= 1 and box[1].stop <= width - 1  # a pixel of margin each side
    for i in range(1, 4):
        assert not header[:, i * (width + GAP) - GAP:i * (width + GAP)].any()


def test_the_label_line_no_longer_repeats_the_column_names() -> None:
    assert strip_label("clip_1", {"f1": 0.71234, "precision": 0.6}) == "clip_1  f1 0.712  " \
                                                                      "precision 0.6"
