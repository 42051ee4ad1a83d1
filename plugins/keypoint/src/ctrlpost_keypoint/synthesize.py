"""A pseudo keypoint file for a synthetic clip: a stick figure that stands in the moving shape.

:func:`synthesize_keypoints` is ``KEYPOINT_FILE.synthesize``: what ctrlpost's ``synthetic`` data
source calls after making a clip, so the embedded default (``recipes/keypoint_tiny.toml``) trains
keypoints with no pose model. For each frame:

- the shape's pixels (:func:`ctrlpost_keypoint.foreground.foreground_masks`) give a box: their
  centroid plus and minus ``sqrt(3)`` times their standard deviation along each axis (exactly
  the extent of an upright rectangle; a little inside a disc or a triangle);
- one person fills that box: :data:`BODY_TEMPLATE`, a front-facing stick figure in box units, as
  the 17 COCO body joints with confidence 1.0. Feet, face and hands sit on the ankles, nose and
  wrists with confidence 0, so the hint draws the 18 OpenPose body joints and their 17 links only
  (feet would be black dots; face and hand dots would blot a figure a few pixels tall);
- a frame with fewer than 4 shape pixels has nobody: an empty list.

Coordinates are normalised (x by the width, y by the height, within 0..1) and float32; the file
is written by :func:`ctrlpost_keypoint.keypoint_file.write_keypoint_pickle`, every frame present.
Deterministic: the same frames give the same bytes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ctrlpost.modalities.foreground import foreground_masks
from ctrlpost_keypoint.keypoint_file import write_keypoint_pickle

BODY_TEMPLATE: tuple[tuple[float, float], ...] = (
    (0.50, 0.10),  # 0 nose
    (0.55, 0.06), (0.45, 0.06),  # 1 left eye, 2 right eye
    (0.60, 0.09), (0.40, 0.09),  # 3 left ear, 4 right ear
    (0.70, 0.26), (0.30, 0.26),  # 5 left shoulder, 6 right shoulder
    (0.82, 0.43), (0.18, 0.43),  # 7 left elbow, 8 right elbow
    (0.90, 0.60), (0.10, 0.60),  # 9 left wrist, 10 right wrist
    (0.62, 0.58), (0.38, 0.58),  # 11 left hip, 12 right hip
    (0.66, 0.78), (0.34, 0.78),  # 13 left knee, 14 right knee
    (0.70, 0.96), (0.30, 0.96),  # 15 left ankle, 16 right ankle
)
"""(x, y) of the 17 COCO body joints inside the person's box, 0..1 from its top left corner.
The person faces the camera: their left (odd rows) is on the image's right."""

# Where the other COCO-WholeBody rows sit (confidence 0): feet 17..22 (left big toe, small toe,
# heel, then right), face 23..90, left hand 91..111, right hand 112..132.
_ANCHORS = (15,) * 3 + (16,) * 3 + (0,) * 68 + (9,) * 21 + (10,) * 21
MIN_PIXELS = 4
"""A frame with fewer shape pixels than this has nobody in it."""


def synthesize_keypoints(frames_T_H_W_C: np.ndarray, fps: float, path: Path) -> None:
    """Write ``path`` (``keypoint/<clip>.pickle``) for a synthetic clip from its RGB uint8
    frames ``[T, H, W, 3]`` (all of them); ``fps`` is not needed."""
    masks_T_H_W = foreground_masks(frames_T_H_W_C)
    _, H, W = masks_T_H_W.shape
    template_17_2 = np.array(BODY_TEMPLATE, dtype=np.float64)
    persons: dict[int, list[np.ndarray]] = {}
    for t, mask_H_W in enumerate(masks_T_H_W):
        ys, xs = np.nonzero(mask_H_W)
        if len(ys) < MIN_PIXELS:
            persons[t] = []
            continue
        # pixel i spans [i, i + 1): the centroid of the pixels' centres is mean + 0.5
        centre_2 = np.array([xs.mean(), ys.mean()]) + 0.5
        half_2 = math.sqrt(3.0) * np.array([xs.std(), ys.std()])
        body_17_2 = (centre_2 - half_2) + template_17_2 * (2.0 * half_2)
        body_17_2 = np.clip(body_17_2 / np.array([W, H]), 0.0, 1.0)
        body_133_3 = np.zeros((133, 3), dtype=np.float32)
        body_133_3[:17, :2] = body_17_2
        body_133_3[:17, 2] = 1.0
        body_133_3[17:, :2] = body_17_2[list(_ANCHORS)]
        persons[t] = [body_133_3]
    write_keypoint_pickle(path, persons)
