"""The seg hint file ``seg/<clip>.pickle``: reading a window of it, checking it, writing it.

The file is a pickled list with one dict per object (the format the reference's SAM2 helper
returns)::

    {"phrase": str,
     "segmentation_mask_rle": {
         "data": {"size": [T*H*W, 1], "counts": bytes},   # pycocotools RLE
         "mask_shape": (T, H, W)}}

``data`` encodes the object's boolean mask over **every** frame of the clip, flattened
frame-major into one column (see :mod:`ctrlpost_seg.rle`). ``counts`` may be ``bytes`` (what
pycocotools returns) or ``str``. Pickles are loaded with :func:`ctrlpost.modalities.safe_pickle.
load_pickle`, which runs no code from the file.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctrlpost.modalities import ClipInfo, ClipWindow, HintFileError, write_bytes_atomic
from ctrlpost.modalities.safe_pickle import load_pickle
from ctrlpost_seg.rle import RleError, check_runs, mask_from_runs, runs_from_counts, window_runs


@dataclass(frozen=True, eq=False)
class SegObject:
    """One object of a seg file, cut to a window: its phrase and its run lengths in the window."""

    phrase: str
    runs: np.ndarray  # int64 run lengths inside the window, 0s first, alternating

    @property
    def pixel_count(self) -> int:
        """Mask pixels of the object inside the window (over all its frames)."""
        return int(self.runs[1::2].sum())


@dataclass(frozen=True, eq=False)
class SegMasks:
    """What :func:`read_seg` returns: every object of the file, for the window's frames only.

    Masks stay run-length encoded until :meth:`mask` is called (the hint decodes only the objects
    it draws): a 121-frame 720p mask is 111 MB as booleans, a few hundred KB as runs.
    """

    shape: tuple[int, int, int]  # (num_frames, H, W) of the window
    objects: tuple[SegObject, ...]

    def mask(self, index: int) -> np.ndarray:
        """Object ``index``'s boolean mask ``[T, H, W]`` over the window's frames."""
        return mask_from_runs(self.objects[index].runs).reshape(self.shape)


def read_seg(path: Path, window: ClipWindow) -> SegMasks:
    """The objects of ``path`` for frames ``[window.start, window.start + window.num_frames)``."""
    clip = window.clip
    stop = window.start + window.num_frames
    if window.start < 0 or window.num_frames < 1 or stop > clip.frame_count:
        raise HintFileError(f"{path}: frames [{window.start}, {stop}) are not in the clip's "
                            f"{clip.frame_count} frames")
    try:
        entries = _parse(load_pickle(path), clip)
    except HintFileError as exc:
        raise HintFileError(f"{path}: {exc}") from None
    frame_pixels = clip.height * clip.width
    objects = tuple(
        SegObject(phrase, window_runs(runs, window.start * frame_pixels, stop * frame_pixels))
        for phrase, runs in entries
    )
    return SegMasks(shape=(window.num_frames, clip.height, clip.width), objects=objects)


def check_seg(path: Path, clip: ClipInfo) -> str | None:
    """None when ``path`` can serve every window of ``clip``, else what is wrong (one sentence)."""
    try:
        _parse(load_pickle(path), clip)
    except HintFileError as exc:
        return str(exc)
    return None


def _parse(content: Any, clip: ClipInfo) -> list[tuple[str, np.ndarray]]:
    """(phrase, whole-clip run lengths) per object; raises HintFileError naming the problem."""
    if not isinstance(content, list):
        raise HintFileError(f"holds a {type(content).__name__}, not a list of objects")
    expected = (clip.frame_count, clip.height, clip.width)
    n_pixels = expected[0] * expected[1] * expected[2]
    entries = []
    for index, entry in enumerate(content):
        phrase, data, shape = _fields(entry, index)
        name = f"object {index} ({phrase!r})"
        if shape != expected:
            raise HintFileError(
                f"{name} has mask_shape {shape} (T, H, W) but the clip is {expected}: "
                + _difference(shape, expected)
            )
        size = data.get("size")
        if _ints(size) != [n_pixels, 1]:
            raise HintFileError(f"{name} has RLE size {size!r}; mask_shape {shape} needs "
                                f"[{n_pixels}, 1] (T*H*W pixels in one column)")
        counts = data.get("counts")
        if not isinstance(counts, bytes | str):
            raise HintFileError(f"{name} has RLE counts of type {type(counts).__name__}, "
                                "not the compressed bytes/str pycocotools writes")
        try:
            runs = runs_from_counts(counts)
        except RleError as exc:
            raise HintFileError(f"{name}: {exc}") from None
        if (problem := check_runs(runs, n_pixels)) is not None:
            raise HintFileError(f"{name}: {problem}")
        entries.append((phrase, runs))
    return entries


def _fields(entry: Any, index: int) -> tuple[str, dict[str, Any], tuple[int, ...] | None]:
    if not isinstance(entry, dict) or not isinstance(entry.get("segmentation_mask_rle"), dict):
        raise HintFileError(f"object {index} is not a dict with 'phrase' and "
                            "'segmentation_mask_rle'")
    phrase = entry.get("phrase")
    if not isinstance(phrase, str):
        raise HintFileError(f"object {index} has no 'phrase' string")
    rle = entry["segmentation_mask_rle"]
    data = rle.get("data")
    if not isinstance(data, dict):
        raise HintFileError(f"object {index} ({phrase!r}) has no RLE dict under "
                            "segmentation_mask_rle.data")
    shape = _ints(rle.get("mask_shape"))
    return phrase, data, None if shape is None else tuple(shape)


def _ints(value: Any) -> list[int] | None:
    """``value`` as a list of ints when it is a list/tuple of (numpy) integers, else None."""
    if not isinstance(value, list | tuple):
        return None
    if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in value):
        return None
    return [int(v) for v in value]


def _difference(shape: tuple[int, ...] | None, expected: tuple[int, int, int]) -> str:
    if shape is None or len(shape) != 3:
        return "it must be 3 integers (frames, height, width)"
    parts = [f"{what} {got} instead of {want}"
             for what, got, want in zip(("frames", "height", "width"), shape, expected, strict=True)
             if got != want]
    return ", ".join(parts)


def write_seg_pickle(path: Path, objects: Iterable[tuple[str, np.ndarray]]) -> None:
    """Write ``objects`` (phrase, boolean mask ``[T, H, W]`` over the whole clip) as a seg file.

    Each mask is encoded as the reference's SAM2 helper does: flattened in C order into a
    ``(T*H*W, 1)`` column and run-length encoded by pycocotools (``counts`` as bytes). The file
    is written under a temporary name and renamed, so a reader never sees half of it.
    """
    from pycocotools import mask as coco_mask  # lazy: only writers need pycocotools

    records = []
    for phrase, mask_T_H_W in objects:
        mask_T_H_W = np.asarray(mask_T_H_W)
        if mask_T_H_W.ndim != 3:
            raise ValueError(f"mask of {phrase!r} must be [T, H, W], got {list(mask_T_H_W.shape)}")
        column = np.asfortranarray(mask_T_H_W.reshape(-1, 1) != 0, dtype=np.uint8)
        if column.shape[0] >= 2**32:
            raise ValueError(f"mask of {phrase!r} has {column.shape[0]} pixels; pycocotools "
                             "encodes at most 2**32 - 1")
        encoded = coco_mask.encode(column)
        records.append({
            "phrase": str(phrase),
            "segmentation_mask_rle": {
                "data": {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"]},
                "mask_shape": tuple(int(s) for s in mask_T_H_W.shape),
            },
        })
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(Path(path), pickle.dumps(records, protocol=4))
