"""The ``depth`` control modality: the clip's precomputed depth video, as in Cosmos-Transfer1.

The hint is ``depth/<clip>.mp4`` (grey in 3 channels, near = bright), decoded frame-aligned with
the clip and passed through unchanged. :func:`write_depth_video` writes such a file losslessly;
``ANNOTATOR`` makes one for a real clip with Depth Anything V2 Small (`ctrlpost annotate`,
``DEPTH_FILE.annotator``); :func:`synthesize_depth` writes a pseudo one for a synthetic clip
(``DEPTH_FILE.synthesize``). With ``source = "online"`` the training process runs the same model
on the sampled frames instead (``ONLINE_DEPTH``), and no file is read.

Registered through the ``ctrlpost`` entry-point group; this module is the plugin. Importing it
loads neither torch nor cv2.
"""

from __future__ import annotations

from ctrlpost.modalities import ExactOn, Modality, hookimpl
from ctrlpost_depth.annotator import ANNOTATOR
from ctrlpost_depth.files import DEPTH_FILE, MADE_BY, check_depth, read_depth
from ctrlpost_depth.hints import DepthHints, build_generator
from ctrlpost_depth.online import ONLINE_DEPTH
from ctrlpost_depth.params import DepthParams
from ctrlpost_depth.synthesize import synthesize_depth
from ctrlpost_depth.writer import depth_levels, write_depth_video

__all__ = ["ANNOTATOR", "DEPTH", "DEPTH_FILE", "MADE_BY", "ONLINE_DEPTH", "DepthHints",
           "DepthParams",
           "build_generator", "check_depth", "depth_levels", "read_depth", "synthesize_depth",
           "write_depth_video"]

DEPTH = Modality(
    name="depth",
    summary="The clip's depth video depth/<clip>.mp4, passed through (control_input_depth)",
    params_model=DepthParams,
    # A FileHintGenerator (draw and render also take the file's content), which the descriptor's
    # annotation (HintGenerator) does not name.
    build_generator=build_generator,  # type: ignore[arg-type]
    hint_channels=3,
    hint_key="control_input_depth",
    # The hint is the decoded file; OpenCV 4.11's decode equalled decord's (the reference's
    # reader) on every file compared. Other OpenCV releases bundle other FFmpeg builds.
    exact_on=(ExactOn("OpenCV", "cv2", ">=4.11,<4.12",
                      why="decoding compared with the reference's reader on OpenCV 4.11 only"),),
    hint_file=DEPTH_FILE,
    online_hint=ONLINE_DEPTH,
    released_control_file="depth_control.pt",
)


@hookimpl
def ctrlpost_register_modalities() -> list[Modality]:
    """Provide the ``depth`` modality."""
    return [DEPTH]
