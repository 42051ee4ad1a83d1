"""Person boxes from a YOLOX ONNX detector, with rtmlib's pre- and post-processing.

Per frame, as rtmlib's ``YOLOX`` (and DWPose's own ONNX code) does it:

1. **Letterbox.** The frame is scaled by ``r = min(S_h / H, S_w / W)`` (``cv2.resize``, bilinear,
   to ``(int(W r), int(H r))``) onto an ``S_h x S_w`` canvas of grey 114, at its top left. The
   detector gets raw 0-255 values in **BGR** order (YOLOX is trained on OpenCV's BGR images).
2. **Decode.** A raw YOLOX output ``[N, 5 + classes]`` holds, for each anchor of the stride 8,
   16 and 32 grids (row-major, finest first), the box offsets, objectness and class
   probabilities: centre ``(dx + gx, dy + gy) * stride``, size ``exp(dw, dh) * stride``, person
   score ``objectness * p(class 0)``. An output ``[N, 5]`` is an export with NMS built in:
   ``(x1, y1, x2, y2, score)`` of its single class.
3. **Keep** the boxes scoring above ``score_threshold``, then greedy NMS at ``iou_threshold``
   (areas counted with rtmlib's ``+1`` pixel convention), highest score first (of equal scores,
   the later anchor first, as rtmlib orders them); coordinates are divided by ``r`` back to
   frame pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

from ctrlpost_keypoint.onnx_model import OnnxModel

STRIDES = (8, 16, 32)
PAD_VALUE = 114
SCORE_THRESHOLD = 0.3
"""A box is a person when its score is above this (DWPose's own setting for its detector)."""
IOU_THRESHOLD = 0.45
"""Of two boxes overlapping more than this (IoU), the lower-scoring one is dropped."""


def letterbox(frame_H_W_C: np.ndarray, size_hw: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The frame scaled to fit ``size_hw`` at the top left of a grey canvas, and the scale."""
    H, W = frame_H_W_C.shape[:2]
    if size_hw == (H, W):
        return frame_H_W_C.copy(), 1.0
    ratio = min(size_hw[0] / H, size_hw[1] / W)
    new_w, new_h = int(W * ratio), int(H * ratio)
    canvas_H_W_C = np.full((*size_hw, 3), PAD_VALUE, dtype=np.uint8)
    canvas_H_W_C[:new_h, :new_w] = cv2.resize(frame_H_W_C, (new_w, new_h),
                                              interpolation=cv2.INTER_LINEAR)
    return canvas_H_W_C, ratio


def decode_yolox(raw_N_D: np.ndarray, size_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``[N, 4]`` (x1, y1, x2, y2 in the model input's pixels) and person scores ``[N]``
    of one image's raw YOLOX output."""
    grids, strides = [], []
    for stride in STRIDES:
        rows, cols = size_hw[0] // stride, size_hw[1] // stride
        xs, ys = np.meshgrid(np.arange(cols), np.arange(rows))
        grids.append(np.stack([xs, ys], axis=-1).reshape(-1, 2))
        strides.append(np.full((rows * cols, 1), stride))
    grid_N_2, stride_N_1 = np.concatenate(grids), np.concatenate(strides)
    if len(grid_N_2) != len(raw_N_D):
        raise RuntimeError(f"the detector gave {len(raw_N_D)} anchors; a YOLOX of input "
                           f"{size_hw} has {len(grid_N_2)} (strides {STRIDES})")
    raw_N_D = raw_N_D.astype(np.float64)
    centre_N_2 = (raw_N_D[:, :2] + grid_N_2) * stride_N_1
    half_N_2 = np.exp(raw_N_D[:, 2:4]) * stride_N_1 / 2.0
    boxes_N_4 = np.concatenate([centre_N_2 - half_N_2, centre_N_2 + half_N_2], axis=1)
    return boxes_N_4, raw_N_D[:, 4] * raw_N_D[:, 5]


def nms(boxes_N_4: np.ndarray, scores_N: np.ndarray, iou_threshold: float) -> list[int]:
    """Indices of the boxes greedy non-maximum suppression keeps, highest score first."""
    x1, y1, x2, y2 = boxes_N_4.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores_N, kind="stable")[::-1]  # equal scores: the later box first
    keep: list[int] = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou_threshold]
    return keep


def person_boxes(output_N_D: np.ndarray, ratio: float, size_hw: tuple[int, int], *,
                 score_threshold: float, iou_threshold: float) -> np.ndarray:
    """The persons ``[n, 4]`` (x1, y1, x2, y2 in frame pixels, best first) of one image's
    detector output."""
    if output_N_D.ndim != 2 or output_N_D.shape[1] < 5:
        raise RuntimeError(f"the detector's output per image is {output_N_D.shape}, not "
                           "[anchors, 5 + classes] (raw YOLOX) or [boxes, 5] (with NMS)")
    with_nms = output_N_D.shape[1] == 5
    if with_nms:
        boxes_N_4, scores_N = output_N_D[:, :4].astype(np.float64), output_N_D[:, 4]
    else:
        boxes_N_4, scores_N = decode_yolox(output_N_D, size_hw)
    above = scores_N > score_threshold
    boxes_N_4, scores_N = boxes_N_4[above], scores_N[above]
    if with_nms:
        keep = list(np.argsort(scores_N, kind="stable")[::-1])
    else:
        keep = nms(boxes_N_4, scores_N, iou_threshold)
    return (boxes_N_4[keep] / ratio).reshape(-1, 4)


def detect_persons(model: OnnxModel, frames_T_H_W_C: np.ndarray, batch_size: int, *,
                   score_threshold: float = SCORE_THRESHOLD,
                   iou_threshold: float = IOU_THRESHOLD) -> list[np.ndarray]:
    """For each RGB uint8 frame, its person boxes ``[n, 4]`` in pixels (``n`` may be 0)."""
    boxes: list[np.ndarray] = []
    for start in range(0, len(frames_T_H_W_C), max(1, batch_size)):
        chunk = frames_T_H_W_C[start:start + max(1, batch_size)]
        boxed = [letterbox(np.ascontiguousarray(f[..., ::-1]), model.input_hw) for f in chunk]
        x_B_C_H_W = np.stack([canvas.transpose(2, 0, 1) for canvas, _ in boxed])
        output_B_N_D = model.run(x_B_C_H_W.astype(np.float32), batch_size)[0]
        boxes += [person_boxes(out, ratio, model.input_hw, score_threshold=score_threshold,
                               iou_threshold=iou_threshold)
                  for out, (_, ratio) in zip(output_B_N_D, boxed, strict=True)]
    return boxes
