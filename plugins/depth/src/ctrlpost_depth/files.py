"""The per-clip depth file: ``depth/<clip>.mp4``, read with OpenCV.

The file must be frame-aligned with ``videos/<clip>.mp4``, of the same width and height, with at
least as many frames; grey replicated in 3 channels, near = bright. ``verify`` runs
:func:`check_depth` on every clip, the data loader :func:`read_depth` on every sample.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ctrlpost.modalities import ClipInfo, ClipWindow, HintFile, HintFileError
from ctrlpost_depth.annotator import ANNOTATOR
from ctrlpost_depth.synthesize import synthesize_depth

MADE_BY = "ctrlpost annotate RECIPE"
"""The command that makes a clip's depth file (``verify`` names it when one is missing)."""


def _cv2() -> ModuleType:
    # FFmpeg prints its own complaint for every bad file; the checks report each one, once, by
    # name. OpenCV reads this variable when it opens its first capture.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    import cv2  # lazy: importing the plugin must stay cheap for shell completion

    return cv2


def _open(path: Path) -> Any:
    cv2 = _cv2()
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        return None
    return capture


def read_depth(path: Path, window: ClipWindow) -> np.ndarray:
    """RGB uint8 ``[T, H, W, 3]``: frames ``[start, start + num_frames)`` of the depth video.

    One seek (``CAP_PROP_POS_FRAMES``) to the window's first frame, then sequential decoding;
    OpenCV's BGR frames are turned to RGB. Raises :class:`HintFileError` (one line) when the
    file cannot be opened, is too short, decodes to another size than the clip's, or a frame
    fails to decode.
    """
    cv2 = _cv2()
    start, count, clip = window.start, window.num_frames, window.clip
    end = start + count
    capture = _open(path)
    if capture is None:
        raise HintFileError(f"{path}: cannot open the depth video (unreadable or truncated)")
    try:
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if frames < end:
            raise HintFileError(f"{path}: depth video has {frames} frames, the sample needs "
                                f"frames {start}..{end - 1}")
        if start:
            capture.set(cv2.CAP_PROP_POS_FRAMES, start)
        depth_T_H_W_C = np.empty((count, clip.height, clip.width, 3), dtype=np.uint8)
        for t in range(count):
            ok, frame_H_W_C = capture.read()
            if not ok:
                raise HintFileError(f"{path}: depth frame {start + t} failed to decode")
            if frame_H_W_C.shape != depth_T_H_W_C.shape[1:]:
                height, width = frame_H_W_C.shape[:2]
                raise HintFileError(f"{path}: depth frames are {width}×{height}, the clip is "
                                    f"{clip.width}×{clip.height} (width×height)")
            cv2.cvtColor(frame_H_W_C, cv2.COLOR_BGR2RGB, dst=depth_T_H_W_C[t])
        return depth_T_H_W_C
    finally:
        capture.release()


def check_depth(path: Path, clip: ClipInfo) -> str | None:
    """None when the depth video can serve every window of ``clip``, else one sentence naming
    what differs: too few frames, another width×height, or a first frame that does not
    decode."""
    cv2 = _cv2()
    capture = _open(path)
    if capture is None:
        return "cannot be opened as a video (unreadable or truncated)"
    try:
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        problems = []
        if frames < clip.frame_count:
            problems.append(f"has {frames} frames, fewer than the clip's {clip.frame_count}")
        if (width, height) != (clip.width, clip.height):
            problems.append(f"is {width}×{height}, the clip is {clip.width}×{clip.height} "
                            "(width×height)")
        if not problems and not capture.read()[0]:
            problems.append("its first frame does not decode")
    finally:
        capture.release()
    if not problems:
        return None
    return f"depth video {' and '.join(problems)}; remake it frame-aligned with the clip"


DEPTH_FILE = HintFile(folder="depth", suffix=".mp4", read=read_depth, check=check_depth,
                      made_by=MADE_BY, synthesize=synthesize_depth, annotator=ANNOTATOR)
