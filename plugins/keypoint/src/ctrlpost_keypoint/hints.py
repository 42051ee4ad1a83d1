"""The keypoint hint of Cosmos-Transfer1 training (``AddControlInputKeypoint``): OpenPose skeletons.

Nothing is random: ``draw`` returns ``{}`` and consumes no randomness. For each frame, on a black
``[H, W, 3]`` canvas, each person in list order (later persons over earlier ones):

1. the 133 body rows are scaled to pixels (x by the clip's W, y by its H, in float64) and
   turned into the 134 OpenPose joints (:func:`ctrlpost_keypoint.skeleton.to_openpose`);
2. every joint whose confidence is at least ``confidence_threshold`` is drawn, in joint order,
   as ``cv2.circle(canvas, (int(x), int(y)), radius, colour, -1)``;
3. then every link whose two joints were drawn, in link order, as ``cv2.line(canvas, a, b,
   colour, thickness=line_width)``.

Pixel coordinates are truncated with ``int()``; circles and lines use OpenCV's default 8-connected
rasterisation (no antialiasing). Colours are RGB, the hint's channel order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctrlpost_keypoint.keypoint_file import KeypointFrames
from ctrlpost_keypoint.params import KeypointParams
from ctrlpost_keypoint.skeleton import JOINT_COLORS, LINKS, to_openpose


@dataclass(frozen=True)
class KeypointHints:
    """Keypoint hints: every annotated person drawn as an OpenPose-134 skeleton."""

    params: KeypointParams

    def draw(self, rng: np.random.Generator, source: KeypointFrames) -> dict[str, Any]:
        """Nothing to draw: the hint is a function of the annotations alone."""
        return {}

    def render(self, frames_T_H_W_C: np.ndarray, drawn: Mapping[str, Any],
               source: KeypointFrames) -> np.ndarray:
        """uint8 ``[T, H, W, 3]``: the skeletons of ``source`` at the frames' resolution."""
        T, H, W = frames_T_H_W_C.shape[:3]
        if len(source.persons) != T:
            raise ValueError(f"{T} frames but keypoints for {len(source.persons)}")
        hint_T_H_W_C = np.zeros((T, H, W, 3), dtype=np.uint8)
        scale_3 = np.array([W, H, 1], dtype=np.float64)
        for t, bodies in enumerate(source.persons):
            canvas_H_W_C = np.zeros((H, W, 3), dtype=np.uint8)
            for body_133_3 in bodies:
                joints_134_3 = to_openpose(np.asarray(body_133_3, dtype=np.float64) * scale_3)
                self._draw_person(canvas_H_W_C, joints_134_3)
            hint_T_H_W_C[t] = canvas_H_W_C
        return hint_T_H_W_C

    def _draw_person(self, canvas_H_W_C: np.ndarray, joints_134_3: np.ndarray) -> None:
        import cv2  # lazy: importing the plugin must stay cheap for shell completion

        visible = joints_134_3[:, 2] >= self.params.confidence_threshold
        points = [(int(x), int(y)) for x, y in joints_134_3[:, :2].tolist()]
        for i in np.flatnonzero(visible):
            cv2.circle(canvas_H_W_C, points[i], self.params.radius, JOINT_COLORS[i], -1)
        for (a, b), color in LINKS:
            if visible[a] and visible[b]:
                cv2.line(canvas_H_W_C, points[a], points[b], color,
                         thickness=self.params.line_width)


def build_generator(params: KeypointParams) -> KeypointHints:
    """The keypoint hint generator for validated ``params``."""
    return KeypointHints(params)
