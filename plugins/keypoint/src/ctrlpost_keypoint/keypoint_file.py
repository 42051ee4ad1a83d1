"""The keypoint hint file ``keypoint/<clip>.pickle``: reading a window, checking, writing.

The file is a pickled dict from frame index (int) to the list of persons seen in that frame::

    {0: [{"body-keypoints": float [133, 3], "hand-keypoints": float [42, 3]}, ...],
     1: [],    # nobody in frame 1: an empty list, the frame must still be there
     ...}

``body-keypoints`` are COCO-WholeBody joints as (x, y, confidence) with x and y normalised to
0-1 by the frame's width and height; ``hand-keypoints`` repeat its rows 91:133 (both hands).
Every frame of the clip needs an entry. Persons may carry other keys (boxes, face scores): they
are ignored. Pickles are loaded with :func:`ctrlpost.modalities.safe_pickle.load_pickle`, which
runs no code from the file.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctrlpost.modalities import ClipInfo, ClipWindow, HintFileError, write_bytes_atomic
from ctrlpost.modalities.safe_pickle import load_pickle

BODY, HAND = "body-keypoints", "hand-keypoints"
BODY_SHAPE, HAND_SHAPE = (133, 3), (42, 3)
HAND_ROWS = slice(91, 133)  # the body rows the hand array repeats


@dataclass(frozen=True, eq=False)
class KeypointFrames:
    """What :func:`read_keypoints` returns: per frame of the window, each person's
    ``body-keypoints`` (as stored: normalised x, y and confidence).

    The hand array is checked but not kept: the hint draws hands from the body rows, as the
    reference does (its stacked hand rows fall after the 134 joints it draws).
    """

    persons: tuple[tuple[np.ndarray, ...], ...]


def read_keypoints(path: Path, window: ClipWindow) -> KeypointFrames:
    """The persons of frames ``[window.start, window.start + window.num_frames)`` of ``path``."""
    clip, stop = window.clip, window.start + window.num_frames
    if window.start < 0 or window.num_frames < 1 or stop > clip.frame_count:
        raise HintFileError(f"{path}: frames [{window.start}, {stop}) are not in the clip's "
                            f"{clip.frame_count} frames")
    try:
        frames = _frames(load_pickle(path))
        persons = tuple(_persons(frames, t) for t in range(window.start, stop))
    except HintFileError as exc:
        raise HintFileError(f"{path}: {exc}") from None
    return KeypointFrames(persons=persons)


def check_keypoints(path: Path, clip: ClipInfo) -> str | None:
    """None when ``path`` annotates every frame of ``clip`` with valid persons, else what is
    wrong (one sentence)."""
    try:
        frames = _frames(load_pickle(path))
        missing = [t for t in range(clip.frame_count) if t not in frames]
        if missing:
            return (f"has no entry for frame {missing[0]} ({len(missing)} of the clip's "
                    f"{clip.frame_count} frames missing); every frame needs one, an empty list "
                    "when nobody is in it")
        for t in range(clip.frame_count):
            _persons(frames, t)
    except HintFileError as exc:
        return str(exc)
    return None


def _frames(content: Any) -> dict[int, Any]:
    if not isinstance(content, dict):
        raise HintFileError(f"holds a {type(content).__name__}, not a dict of frame index -> "
                            "persons")
    frames: dict[int, Any] = {}
    for key, persons in content.items():
        if isinstance(key, bool) or not isinstance(key, int | np.integer):
            raise HintFileError(f"has the key {key!r}; keys must be frame indices (int)")
        frames[int(key)] = persons
    return frames


def _persons(frames: dict[int, Any], t: int) -> tuple[np.ndarray, ...]:
    """Frame ``t``'s body arrays, each checked (shapes, numbers, finite)."""
    if t not in frames:
        raise HintFileError(f"has no entry for frame {t}; every frame needs one, an empty list "
                            "when nobody is in it")
    persons = frames[t]
    if not isinstance(persons, list | tuple):
        raise HintFileError(f"frame {t} holds a {type(persons).__name__}, not a list of persons")
    bodies = []
    for p, person in enumerate(persons):
        if not isinstance(person, dict) or BODY not in person or HAND not in person:
            raise HintFileError(f"frame {t}, person {p} is not a dict with {BODY!r} and {HAND!r}")
        bodies.append(_array(person[BODY], BODY_SHAPE, f"frame {t}, person {p}: {BODY}"))
        _array(person[HAND], HAND_SHAPE, f"frame {t}, person {p}: {HAND}")
    return tuple(bodies)


def _array(value: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise HintFileError(f"{name} holds {array.dtype} values, not numbers")
    if array.shape != shape:
        raise HintFileError(f"{name} has shape {array.shape}, not {shape} (x, y, confidence)")
    if not np.isfinite(array).all():
        raise HintFileError(f"{name} holds NaN or infinite values")
    return array


def write_keypoint_pickle(path: Path, frames: Mapping[int, Sequence[Any]]) -> None:
    """Write ``frames`` (frame index -> persons) as a keypoint file.

    A person is a dict with ``"body-keypoints"`` (and optionally ``"hand-keypoints"``) or a bare
    ``[133, 3]`` body array. A missing hand array is taken from body rows 91:133. Floating
    arrays keep their dtype (the reference's files hold float16); others become float32. The
    file is written under a temporary name and renamed, so a reader never sees half of it.
    """
    content: dict[int, list[dict[str, np.ndarray]]] = {}
    for key, persons in frames.items():
        if isinstance(key, bool) or not isinstance(key, int | np.integer):
            raise ValueError(f"frame keys must be ints, got {key!r}")
        content[int(key)] = [_person_record(person, int(key), p)
                             for p, person in enumerate(persons)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(Path(path), pickle.dumps(content, protocol=4))


def _person_record(person: Any, t: int, p: int) -> dict[str, np.ndarray]:
    record = dict(person) if isinstance(person, Mapping) else {BODY: person}
    body = _float_array(record[BODY])
    if body.shape != BODY_SHAPE:
        raise ValueError(f"frame {t}, person {p}: {BODY} must be {BODY_SHAPE}, got {body.shape}")
    hand = _float_array(record[HAND]) if HAND in record else body[HAND_ROWS].copy()
    if hand.shape != HAND_SHAPE:
        raise ValueError(f"frame {t}, person {p}: {HAND} must be {HAND_SHAPE}, got {hand.shape}")
    return {**record, BODY: body, HAND: hand}


def _float_array(value: Any) -> np.ndarray:
    array = np.asarray(value)
    return array if array.dtype.kind == "f" else array.astype(np.float32)
