"""The ``keypoint`` control modality: Cosmos-Transfer1's human-pose hint, from per-clip keypoints.

Each clip has ``keypoint/<clip>.pickle`` (COCO-WholeBody keypoints of every person in every
frame, see :mod:`ctrlpost_keypoint.keypoint_file`). The hint draws them as OpenPose-134 skeletons
on black (:mod:`ctrlpost_keypoint.hints`). `ctrlpost annotate` writes the files of real clips
with DWPose on onnxruntime (``KEYPOINT_FILE.annotator``, :mod:`ctrlpost_keypoint.annotator`);
:func:`synthesize_keypoints` writes a pseudo file for a synthetic clip
(``KEYPOINT_FILE.synthesize``). Registered through the ``ctrlpost`` entry-point group; this
module is the plugin. Importing it loads neither torch, cv2 nor onnxruntime.
"""

from __future__ import annotations

from ctrlpost.modalities import Annotator, ExactOn, HintFile, Modality, hookimpl
from ctrlpost.modalities.safe_pickle import load_pickle
from ctrlpost_keypoint.annotator import (
    DETECTOR_FILE,
    DWPOSE_REPO,
    POSE_FILE,
    WholebodyModels,
    annotate_clip,
    load_wholebody,
)
from ctrlpost_keypoint.hints import KeypointHints, build_generator
from ctrlpost_keypoint.keypoint_file import (
    KeypointFrames,
    check_keypoints,
    read_keypoints,
    write_keypoint_pickle,
)
from ctrlpost_keypoint.params import KeypointParams
from ctrlpost_keypoint.skeleton import COCO_OF_OPENPOSE, JOINT_COLORS, LINKS, to_openpose
from ctrlpost_keypoint.synthesize import synthesize_keypoints
from ctrlpost_keypoint.tiny_models import make_tiny

__all__ = [
    "ANNOTATOR",
    "COCO_OF_OPENPOSE",
    "DWPOSE_REPO",
    "JOINT_COLORS",
    "KEYPOINT",
    "KEYPOINT_FILE",
    "LINKS",
    "KeypointFrames",
    "KeypointHints",
    "KeypointParams",
    "WholebodyModels",
    "build_generator",
    "check_keypoints",
    "load_pickle",
    "read_keypoints",
    "synthesize_keypoints",
    "to_openpose",
    "write_keypoint_pickle",
]

ANNOTATOR = Annotator(models=(DWPOSE_REPO,), load=load_wholebody, annotate=annotate_clip,
                      make_tiny=make_tiny,
                      # the two ONNX graphs it runs; the repo's .pth checkpoints (~1.1 GB) are
                      # the same networks for other runtimes
                      model_files={DWPOSE_REPO: (DETECTOR_FILE, POSE_FILE)})
"""What `ctrlpost annotate` runs for keypoint recipes: DWPose on onnxruntime."""

KEYPOINT_FILE = HintFile(
    folder="keypoint",
    suffix=".pickle",
    read=read_keypoints,
    check=check_keypoints,
    made_by="ctrlpost annotate RECIPE",
    synthesize=synthesize_keypoints,
    annotator=ANNOTATOR,
)

KEYPOINT = Modality(
    name="keypoint",
    summary="OpenPose-134 skeletons of per-clip COCO-WholeBody keypoints (control_input_keypoint)",
    params_model=KeypointParams,
    # A FileHintGenerator (draw and render also take the file's content), which the
    # descriptor's annotation (HintGenerator) does not name.
    build_generator=build_generator,  # type: ignore[arg-type]
    hint_channels=3,
    hint_key="control_input_keypoint",
    hint_file=KEYPOINT_FILE,
    # cv2.circle / cv2.line give the same bytes on OpenCV 4.10, 4.11 and 4.12; from 4.13 on
    # (4.13, 4.14, 5.0 and 5.1 compared) thick lines are rasterised differently.
    exact_on=(
        ExactOn(
            "OpenCV", "cv2", ">=4.10,<4.13",
            why="cv2.line draws thick lines differently on some pixels from OpenCV 4.13 on",
        ),
    ),
    released_control_file="keypoint_control.pt",
)


@hookimpl
def ctrlpost_register_modalities() -> list[Modality]:
    """Provide the ``keypoint`` modality."""
    return [KEYPOINT]
