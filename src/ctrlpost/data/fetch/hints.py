"""Hint files for clips a data source made itself: each modality's plugin writes a plausible
file from the decoded clip (``HintFile.synthesize``), so the embedded default can train depth,
segmentation and keypoint ControlNets with no annotation model."""

from __future__ import annotations

from collections.abc import Sequence

from ctrlpost.data.layout import DatasetLayout
from ctrlpost.errors import DataError
from ctrlpost.modalities import HintFile


def synthesize_hint_files(layout: DatasetLayout, hint_files: Sequence[HintFile]) -> int:
    """Write every missing hint file of ``hint_files`` for the clips of ``layout``; returns how
    many were written. A file that is already there is kept (re-running is cheap)."""
    from ctrlpost.data.video import VideoReader  # cv2 and torch: only when there is work

    written = 0
    for hint_file in hint_files:
        if hint_file.synthesize is None:
            continue
        for name in layout.clips():
            path = hint_file.path(layout.root, name)
            if path.is_file():
                continue
            with VideoReader(layout.video(name)) as reader:
                frames_T_H_W_C = reader.read(0, reader.frame_count())
                fps = reader.info.fps
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                hint_file.synthesize(frames_T_H_W_C, fps, path)
            except OSError:
                raise  # the CLI names the path and the fix
            except Exception as exc:  # a plugin's failure, named with its file
                raise DataError(f"{path}: the {hint_file.folder} plugin could not write it: "
                                f"{type(exc).__name__}: {exc}") from None
            written += 1
    return written
