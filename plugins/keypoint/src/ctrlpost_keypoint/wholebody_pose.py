"""Whole-body keypoints of boxed persons from an RTMPose-family (SimCC) ONNX model.

Per box, as rtmlib's ``RTMPose`` (and DWPose's own ONNX code) does it:

1. **Crop.** The box's centre and its size times 1.25 are taken, the size is widened or
   heightened to the model input's aspect ratio, and that region is warped onto the ``h x w``
   input with ``cv2.warpAffine`` (bilinear, black outside the frame), from the affine map of
   three float32 point pairs (the centre, the point half a width above it, and that point
   turned 90 degrees about it).
2. **Normalise** the **RGB** crop with ImageNet's mean (123.675, 116.28, 103.53) and standard
   deviation (58.395, 57.12, 57.375) (RTMPose models are trained on RGB).
3. **Decode.** The model gives per keypoint a 1-D distribution over x and over y
   (``simcc_x [K, w * s]``, ``simcc_y [K, h * s]``, ``s`` = 2 for DWPose and RTMW). A keypoint
   lies at the arg-max bins divided by ``s``, mapped back through the crop (``bin / s / w *
   region_w + centre_x - region_w / 2``, likewise for y); its confidence is the mean of the two
   maxima. A keypoint whose confidence is not positive is put at bin -1.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ctrlpost_keypoint.onnx_model import OnnxModel

MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)
BOX_PADDING = 1.25


def crop_region(box_4: np.ndarray, input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Centre ``(x, y)`` and size ``(w, h)`` of the frame region a box's crop shows."""
    x1, y1, x2, y2 = np.asarray(box_4, dtype=np.float64)
    centre_2 = np.array([x1 + x2, y1 + y2]) * 0.5
    box_w, box_h = (x2 - x1) * BOX_PADDING, (y2 - y1) * BOX_PADDING
    aspect = input_hw[1] / input_hw[0]
    size_2 = np.array([box_w, box_w / aspect] if box_w > box_h * aspect
                      else [box_h * aspect, box_h])
    return centre_2, size_2


def _warp_matrix(centre_2: np.ndarray, size_2: np.ndarray, input_hw: tuple[int, int]
                 ) -> np.ndarray:
    h, w = input_hw
    src_3_2 = np.zeros((3, 2), np.float32)
    src_3_2[0] = centre_2
    src_3_2[1] = centre_2 + np.array([0.0, size_2[0] * -0.5])
    dst_3_2 = np.zeros((3, 2), np.float32)
    dst_3_2[0] = [w * 0.5, h * 0.5]
    dst_3_2[1] = np.array([w * 0.5, h * 0.5]) + np.array([0.0, w * -0.5])
    for points in (src_3_2, dst_3_2):  # the second point turned 90 degrees about the first
        direction = points[0] - points[1]
        points[2] = points[1] + np.array([-direction[1], direction[0]])
    return cv2.getAffineTransform(src_3_2, dst_3_2)


def crop_person(frame_H_W_C: np.ndarray, box_4: np.ndarray, input_hw: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The normalised model input ``[3, h, w]`` (float32) of one box in an RGB uint8 frame,
    and the centre and size of the region it shows."""
    centre_2, size_2 = crop_region(box_4, input_hw)
    warp_2_3 = _warp_matrix(centre_2, size_2, input_hw)
    crop_h_w_C = cv2.warpAffine(frame_H_W_C, warp_2_3, (input_hw[1], input_hw[0]),
                                flags=cv2.INTER_LINEAR)
    normalised = (crop_h_w_C - np.array(MEAN_RGB)) / np.array(STD_RGB)
    return normalised.transpose(2, 0, 1).astype(np.float32), centre_2, size_2


def decode_simcc(simcc_x_K_X: np.ndarray, simcc_y_K_Y: np.ndarray, input_hw: tuple[int, int],
                 centre_2: np.ndarray, size_2: np.ndarray) -> np.ndarray:
    """One person's keypoints ``[K, 3]``: x, y in frame pixels and confidence."""
    h, w = input_hw
    split = simcc_x_K_X.shape[1] / w
    if simcc_y_K_Y.shape[1] != round(split * h) or simcc_x_K_X.shape[0] != simcc_y_K_Y.shape[0]:
        raise RuntimeError(f"the pose model's outputs {simcc_x_K_X.shape} and "
                           f"{simcc_y_K_Y.shape} are not SimCC x and y bins of a {w}x{h} input")
    bins_K_2 = np.stack([simcc_x_K_X.argmax(axis=1), simcc_y_K_Y.argmax(axis=1)], axis=-1)
    bins_K_2 = bins_K_2.astype(np.float32)
    scores_K = 0.5 * (simcc_x_K_X.max(axis=1) + simcc_y_K_Y.max(axis=1))
    bins_K_2[scores_K <= 0] = -1
    xy_K_2 = bins_K_2 / split / np.array([w, h]) * size_2 + centre_2 - size_2 / 2
    return np.concatenate([xy_K_2, scores_K[:, None]], axis=1)


def estimate_poses(model: OnnxModel, frames_T_H_W_C: np.ndarray,
                   boxes_per_frame: Sequence[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """For each RGB uint8 frame, the keypoints ``[n, K, 3]`` (pixels, confidence) of its
    ``n`` boxes, in their order."""
    items = [(t, box) for t, boxes in enumerate(boxes_per_frame) for box in boxes]
    poses: list[list[np.ndarray]] = [[] for _ in boxes_per_frame]
    step = max(1, batch_size)
    for start in range(0, len(items), step):
        chunk = items[start:start + step]
        crops = [crop_person(frames_T_H_W_C[t], box, model.input_hw) for t, box in chunk]
        simcc_x_B_K_X, simcc_y_B_K_Y = model.run(np.stack([c[0] for c in crops]),
                                                 batch_size)[:2]
        for (t, _), (_, centre_2, size_2), sx, sy in zip(chunk, crops, simcc_x_B_K_X,
                                                          simcc_y_B_K_Y, strict=True):
            poses[t].append(decode_simcc(sx, sy, model.input_hw, centre_2, size_2))
    return [np.stack(p) if p else np.zeros((0, 0, 3)) for p in poses]
