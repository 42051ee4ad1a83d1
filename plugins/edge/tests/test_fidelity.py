"""The edge fidelity metric: F1 of Canny edges against the hint, with a pixel tolerance."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

import ctrlpost_edge
from ctrlpost.modalities import registry, sample_rng
from ctrlpost_edge import EDGE, EdgeFidelity, EdgeParams, build_generator, edge_f1
from ctrlpost_edge.fidelity import disk

from .test_edge import synthetic_clip


def steep_lines(seed: int, *, count: int = 12, shape: tuple[int, int] = (96, 128)) -> np.ndarray:
    """bool [H, W] of 1-pixel lines at 45°..135°, away from the border: a horizontal shift
    moves every pixel off the line (no line runs along the shift)."""
    rng = np.random.default_rng(seed)
    canvas = np.zeros(shape, dtype=np.uint8)
    H, W = shape
    for _ in range(count):
        x, y = int(rng.integers(10, W - 10)), int(rng.integers(10, H - 10))
        angle = np.deg2rad(rng.uniform(45, 135))
        length = rng.uniform(10, 30)
        end = (int(np.clip(x + length * np.cos(angle), 8, W - 9)),
               int(np.clip(y + length * np.sin(angle), 8, H - 9)))
        cv2.line(canvas, (x, y), end, 1, thickness=1)
    return canvas.astype(bool)


def shifted(edges: np.ndarray, dx: int, dy: int = 0) -> np.ndarray:
    return np.roll(edges, (dy, dx), axis=(-2, -1))


def test_identical_edge_maps_score_one() -> None:
    edges = steep_lines(0)
    assert edge_f1(edges, edges, tolerance=0) == {"f1": 1.0, "precision": 1.0, "recall": 1.0}
    assert edge_f1(edges, edges, tolerance=2)["f1"] == 1.0


@pytest.mark.parametrize(("dx", "dy"), [(2, 0), (-2, 0), (0, 2), (0, -2)])
def test_a_two_pixel_shift_is_one_within_tolerance_and_low_without(dx: int, dy: int) -> None:
    edges = steep_lines(1) if dy == 0 else steep_lines(1).T.copy()
    moved = shifted(edges, dx, dy)
    assert edge_f1(moved, edges, tolerance=2)["f1"] == 1.0
    assert edge_f1(moved, edges, tolerance=0)["f1"] < 0.15
    assert edge_f1(moved, edges, tolerance=1)["f1"] < 0.5


def test_unrelated_maps_score_low() -> None:
    scores = [edge_f1(steep_lines(seed), steep_lines(seed + 100), tolerance=2)["f1"]
              for seed in range(5)]
    assert max(scores) < 0.3, scores


def test_precision_and_recall_count_the_right_side() -> None:
    expected = steep_lines(2)
    half = expected.copy()
    half[:, 64:] = False  # found only the left half of the expected edges
    result = edge_f1(half, expected, tolerance=0)
    assert result["precision"] == 1.0
    assert result["recall"] == pytest.approx(half.sum() / expected.sum())
    extra = expected | steep_lines(3)  # found everything, plus unrelated edges
    result = edge_f1(extra, expected, tolerance=0)
    assert result["recall"] == 1.0 and result["precision"] < 1.0


def test_frames_are_pooled_and_empty_maps_have_defined_scores() -> None:
    edges_T_H_W = np.stack([steep_lines(4), np.zeros((96, 128), bool)])
    assert edge_f1(edges_T_H_W, edges_T_H_W)["f1"] == 1.0
    empty = np.zeros((2, 8, 8), bool)
    assert edge_f1(empty, empty) == {"f1": 1.0, "precision": 1.0, "recall": 1.0}
    # Finding nothing where edges are expected scores 0, not "undefined".
    assert edge_f1(empty, ~empty) == {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    with pytest.raises(ValueError, match="shape"):
        edge_f1(empty, np.zeros((2, 8, 9), bool))


def test_tolerance_is_a_euclidean_disk() -> None:
    assert disk(1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert disk(2).sum() == 13
    edges = steep_lines(5)
    assert edge_f1(shifted(edges, 2, 2), edges, tolerance=2)["f1"] < 0.5  # 2.8 px away


def test_generated_frames_equal_to_the_clip_score_one() -> None:
    frames = synthetic_clip()
    params = EdgeParams()
    generator = build_generator(params)
    drawn = generator.draw(sample_rng(0, 0, 3))
    hint = generator.render(frames, drawn)
    metric = registry.fidelity_metric(EDGE, params)  # through the installed plugin's hook
    assert isinstance(metric, EdgeFidelity)
    assert metric.score(frames, hint, drawn) == {"f1": 1.0, "precision": 1.0, "recall": 1.0}
    noise = np.random.default_rng(0).integers(0, 256, frames.shape, dtype=np.uint8)
    assert metric.score(noise, hint, drawn)["precision"] < 0.6


def test_the_metric_names_its_headline_and_the_tolerance_is_a_param() -> None:
    assert EdgeFidelity.headline == "f1"
    assert ctrlpost_edge.ctrlpost_fidelity_metric(modality="blur", params=EdgeParams()) is None
    assert EdgeParams().fidelity_tolerance == 2
    assert EdgeParams(fidelity_tolerance=0).fidelity_tolerance == 0
    with pytest.raises(ValidationError):
        EdgeParams(fidelity_tolerance=-1)
