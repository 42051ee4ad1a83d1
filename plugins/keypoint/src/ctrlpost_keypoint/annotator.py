"""`ctrlpost annotate` for keypoints: DWPose whole-body keypoints of every person in every frame.

The reference annotated its keypoint clips with rtmlib (a YOLOX person detector, then an
RTMPose-family whole-body model on each box, both ONNX on onnxruntime). This annotator runs the
same two stages with the same pre- and post-processing (:mod:`ctrlpost_keypoint.person_detector`,
:mod:`ctrlpost_keypoint.wholebody_pose`), on the DWPose pair the Hugging Face Hub holds in
:data:`DWPOSE_REPO`: ``yolox_l.onnx`` (YOLOX-L, COCO, 640x640) and ``dw-ll_ucoco_384.onnx``
(DWPose-L, RTMPose-L distilled on COCO-WholeBody and UBody, 133 keypoints, 288x384). rtmlib itself
is not used: it depends on opencv-python and opencv-contrib-python, whose current releases would
replace the ``cv2`` this plugin pins for exact hints. The detector gets BGR and the pose model
RGB, as each was trained (rtmlib passes both the same array).

For each frame: persons are detected (score above 0.3, NMS at IoU 0.45, best first), each box
gets its 133 COCO-WholeBody keypoints, and the file (:func:`write_keypoint_pickle`) stores per
person ``body-keypoints`` ``[133, 3]`` (x / W, y / H, confidence; float32) and
``hand-keypoints`` (its rows 91:133). Every frame has an entry, an empty list where nobody was
found. Coordinates are not clipped: a keypoint the model places outside the frame stays
outside 0..1, as in rtmlib's output (the hint draws only what falls inside the frame).

:func:`ctrlpost_keypoint.tiny_models.make_tiny` writes random stand-ins of both files for the
tiny flavor. Transformers has no 133-keypoint model: its ViTPose++ checkpoints keep only the
COCO head (17 keypoints) of the original multi-head models, and Sapiens2 predicts its own 308
points.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ctrlpost_keypoint.keypoint_file import BODY, BODY_SHAPE, HAND, HAND_ROWS, write_keypoint_pickle

if TYPE_CHECKING:
    from ctrlpost_keypoint.onnx_model import OnnxModel

DWPOSE_REPO = "yzd-v/DWPose"
DETECTOR_FILE = "yolox_l.onnx"
POSE_FILE = "dw-ll_ucoco_384.onnx"
NUM_KEYPOINTS = BODY_SHAPE[0]


@dataclass(frozen=True)
class WholebodyModels:
    """What :func:`load_wholebody` returns: the detector and the pose model, ready to run."""

    detector: OnnxModel
    pose: OnnxModel


def load_wholebody(folders: Mapping[str, Path], device: str, params: Any) -> WholebodyModels:
    """Open both ONNX models of :data:`DWPOSE_REPO` (``folders[DWPOSE_REPO]``) on ``device``
    (``cpu``, ``cuda`` or ``cuda:N``); ``params`` (the hint's drawing settings) are not needed.

    Raises FileNotFoundError when a file is missing, ValueError when a file is not the model
    expected, and RuntimeError when onnxruntime cannot use the device.
    """
    from ctrlpost_keypoint.onnx_model import open_model  # lazy: imports onnxruntime

    folder = Path(folders[DWPOSE_REPO])
    paths = [folder / DETECTOR_FILE, folder / POSE_FILE]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)} of {DWPOSE_REPO}; run "
                                "`ctrlpost fetch-weights RECIPE` for a keypoint recipe")
    detector, pose = (open_model(path, device) for path in paths)
    shapes = pose.output_shapes()
    counts = [shape[1] for shape in shapes[:2] if len(shape) == 3]
    if len(counts) != 2 or any(isinstance(n, int) and n != NUM_KEYPOINTS for n in counts):
        raise ValueError(f"{pose.path}: expected SimCC outputs [batch, {NUM_KEYPOINTS}, bins] "
                         f"(COCO-WholeBody), found {shapes}")
    return WholebodyModels(detector=detector, pose=pose)


def keypoints_per_frame(models: WholebodyModels, frames_T_H_W_C: np.ndarray, batch_size: int
                        ) -> list[list[np.ndarray]]:
    """For each RGB uint8 frame ``[T, H, W, 3]``, the ``[133, 3]`` keypoints (x and y
    normalised by the frame's width and height, confidence) of each person found in it."""
    from ctrlpost_keypoint.person_detector import detect_persons  # lazy: imports cv2

    if frames_T_H_W_C.ndim != 4 or frames_T_H_W_C.shape[-1] != 3 or \
            frames_T_H_W_C.dtype != np.uint8:
        raise ValueError(f"frames must be RGB uint8 [T, H, W, 3], got {frames_T_H_W_C.dtype} "
                         f"{frames_T_H_W_C.shape}")
    boxes = detect_persons(models.detector, frames_T_H_W_C, batch_size)
    return persons_from_boxes(models, frames_T_H_W_C, boxes, batch_size)


def persons_from_boxes(models: WholebodyModels, frames_T_H_W_C: np.ndarray,
                       boxes_per_frame: list[np.ndarray], batch_size: int
                       ) -> list[list[np.ndarray]]:
    """The pose stage alone: each given box's normalised ``[133, 3]`` keypoints, per frame."""
    from ctrlpost_keypoint.wholebody_pose import estimate_poses  # lazy: imports cv2

    H, W = frames_T_H_W_C.shape[1:3]
    scale_3 = np.array([W, H, 1.0])
    poses = estimate_poses(models.pose, frames_T_H_W_C, boxes_per_frame, batch_size)
    persons = []
    for poses_N_K_3 in poses:
        if len(poses_N_K_3) and poses_N_K_3.shape[1] != NUM_KEYPOINTS:
            raise RuntimeError(f"the pose model gave {poses_N_K_3.shape[1]} keypoints per "
                               f"person, not {NUM_KEYPOINTS} (COCO-WholeBody)")
        persons.append([(pose_K_3 / scale_3).astype(np.float32) for pose_K_3 in poses_N_K_3])
    return persons


def annotate_clip(models: WholebodyModels, frames_T_H_W_C: np.ndarray, fps: float,
                  path: Path, batch_size: int) -> None:
    """Write ``keypoint/<clip>.pickle`` at ``path`` from all the clip's RGB uint8 frames,
    ``batch_size`` frames (and person crops) per model call; ``fps`` is not needed."""
    persons = keypoints_per_frame(models, frames_T_H_W_C, batch_size)
    write_keypoint_pickle(path, {
        t: [{BODY: body_133_3, HAND: body_133_3[HAND_ROWS].copy()} for body_133_3 in bodies]
        for t, bodies in enumerate(persons)
    })
