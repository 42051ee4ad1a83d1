"""`ctrlpost annotate` for seg: GroundingDINO boxes on frame 0, tracked through the clip by SAM2.

The reference's SAM2 helper, as a :class:`~ctrlpost.modalities.Annotator`:

1. ``IDEA-Research/grounding-dino-tiny`` finds boxes for the recipe's ``control.params.prompt``
   on the clip's first frame (:mod:`ctrlpost_seg.detect`: thresholds 0.15 / 0.25, then
   0.1 / 0.1 when nothing passes);
2. ``facebook/sam2-hiera-large`` (transformers' ``Sam2VideoModel``) tracks each box as one
   object through every frame (:mod:`ctrlpost_seg.track`);
3. each object's whole-clip mask ``[T, H, W]`` is written as one RLE with its own phrase
   (:func:`~ctrlpost_seg.seg_file.write_seg_pickle`). No box: a file with no objects (valid;
   the hint is black).

Models run in float16 on CUDA and float32 on the CPU. Importing this module loads neither torch
nor transformers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ctrlpost.modalities import Annotator
from ctrlpost_seg.detect import Detection, Detector, detect, load_detector
from ctrlpost_seg.params import SegParams
from ctrlpost_seg.seg_file import write_seg_pickle
from ctrlpost_seg.tiny_models import DETECTOR_REPO, TRACKER_REPO, make_tiny
from ctrlpost_seg.track import PackedMasks, Tracker, load_tracker, track

if TYPE_CHECKING:
    import torch

__all__ = ["ANNOTATOR", "DETECTOR_REPO", "TRACKER_REPO", "SegAnnotation", "annotate",
           "annotate_boxes", "load", "model_dtype"]


@dataclass(frozen=True, eq=False)
class SegAnnotation:
    """What :func:`load` returns: both models, and the prompt of the recipe."""

    detector: Detector
    tracker: Tracker
    prompt: str


def model_dtype(device: str) -> torch.dtype:
    """float16 on CUDA, float32 elsewhere."""
    import torch

    return torch.float16 if str(device).startswith("cuda") else torch.float32


def load(folders: Mapping[str, Path], device: str, params: SegParams) -> SegAnnotation:
    """Load GroundingDINO and SAM2 from their local folders (``folders[repo]``) on ``device``."""
    dtype = model_dtype(device)
    return SegAnnotation(
        detector=load_detector(Path(folders[DETECTOR_REPO]), device, dtype),
        tracker=load_tracker(Path(folders[TRACKER_REPO]), device, dtype),
        prompt=params.prompt,
    )


def annotate(loaded: SegAnnotation, frames_T_H_W_C: np.ndarray, fps: float, path: Path,
             batch_size: int) -> None:
    """Write ``path`` (``seg/<clip>.pickle``) for a clip's RGB uint8 frames ``[T, H, W, 3]``.

    ``fps`` is not needed; ``batch_size`` is the number of frames SAM2 prepares and encodes
    at once.
    """
    detections = detect(loaded.detector, frames_T_H_W_C[0], loaded.prompt)
    annotate_boxes(loaded.tracker, frames_T_H_W_C, detections, path, batch_size)


def annotate_boxes(tracker: Tracker, frames_T_H_W_C: np.ndarray,
                   detections: list[Detection], path: Path, batch_size: int) -> None:
    """Track ``detections`` (boxes on frame 0) through the clip and write the seg file."""
    packed = track(tracker, frames_T_H_W_C, [d.box_xyxy for d in detections], batch_size)
    write_seg_pickle(path, _objects(detections, packed))


def _objects(detections: list[Detection], packed: PackedMasks,
             ) -> Iterator[tuple[str, np.ndarray]]:
    """(phrase, mask) per object, unpacking one mask at a time as the writer encodes them."""
    for index, detection in enumerate(detections):
        yield detection.phrase, packed.mask(index)


ANNOTATOR = Annotator(
    models=(DETECTOR_REPO, TRACKER_REPO),
    load=load,
    annotate=annotate,
    make_tiny=make_tiny,
    # transformers' files only: the SAM2 repo also holds the same weights as the original
    # project's sam2_hiera_large.pt (~900 MB), GroundingDINO's as pytorch_model.bin.
    model_files={DETECTOR_REPO: ("*.json", "*.txt", "*.safetensors"),
                 TRACKER_REPO: ("*.json", "*.safetensors")},
)
