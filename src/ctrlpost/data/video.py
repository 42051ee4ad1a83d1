"""Video clips: OpenCV decode of consecutive frames, and the resize + reflection padding that
fits frames into their aspect bucket (see :mod:`ctrlpost.data.buckets`).

Decoding seeks once to the start frame and then reads sequentially: one seek per clip instead of
one per frame, which is what makes 121-frame clips cheap (a seek costs tens of milliseconds on
long-GOP H.264). The resize is torch's antialiased bicubic on float32, as torchvision does for
the reference, in chunks of frames so that a 121-frame 720p clip never needs gigabytes at once.
torch's uint8 fast path is *not* used: it rounds between its two separable passes, which moves
0/255 edge hints by up to 30 levels when they are upscaled.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ctrlpost.data.buckets import Fit
from ctrlpost.errors import DataError

# FFmpeg prints its own complaint ("moov atom not found", ...) for every bad file it is asked to
# open; the data checks report each such file themselves, once, by name. OpenCV reads this
# variable when it opens its first capture; set it (e.g. to 16) to see FFmpeg's messages.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

DEFAULT_FPS = 24.0
"""fps used when a container does not report one (the reference's fallback)."""

RESIZE_CHUNK_FRAMES = 8
"""Frames per interpolate call: bounds the float32 working set (~100 MB at 720p)."""


class VideoError(DataError):
    """A clip cannot be opened or decoded, or has too few frames."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a clip."""

    frames: int
    fps: float
    width: int
    height: int


class VideoReader:
    """An open clip. Use as a context manager; ``read(start, count)`` returns RGB frames."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            self._cap.release()
            raise VideoError(f"{self.path}: cannot open video (unreadable or truncated file)")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.info = VideoInfo(
            frames=int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0),
            fps=fps if np.isfinite(fps) and fps > 0 else DEFAULT_FPS,
            width=int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
            height=int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
        )

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the decoder."""
        self._cap.release()

    def read(self, start: int, count: int) -> np.ndarray:
        """uint8 RGB ``[count, H, W, 3]``: frames ``start … start + count - 1``.

        Seeks with ``CAP_PROP_POS_FRAMES``; if the decoder reports a different position
        afterwards, it reopens the file and skips ``start`` frames with ``grab()`` instead.
        """
        if start < 0 or count < 1:
            raise ValueError(f"bad frame range start={start} count={count}")
        at = int(self._cap.get(cv2.CAP_PROP_POS_FRAMES))
        if at != start and not self._seek(start):
            self._reopen()
            for k in range(start):
                if not self._cap.grab():
                    raise VideoError(f"{self.path}: ends at frame {k}, before frame {start}")
        frames_T_H_W_C: np.ndarray | None = None
        for t in range(count):
            ok, frame_H_W_C = self._cap.read()
            if not ok:
                raise VideoError(
                    f"{self.path}: cannot decode frame {start + t} (needs frames {start}-"
                    f"{start + count - 1}; container says {self.info.frames})"
                )
            if frames_T_H_W_C is None:
                frames_T_H_W_C = np.empty((count, *frame_H_W_C.shape), dtype=np.uint8)
            cv2.cvtColor(frame_H_W_C, cv2.COLOR_BGR2RGB, dst=frames_T_H_W_C[t])
        assert frames_T_H_W_C is not None
        return frames_T_H_W_C

    def read_one(self, index: int) -> np.ndarray:
        """uint8 RGB ``[H, W, 3]`` frame ``index``."""
        return self.read(index, 1)[0]

    def decoded_frames(self) -> Iterator[np.ndarray]:
        """Every frame from the first, as the decoder gives it (BGR ``[H, W, 3]``, no
        conversion: a full pass costs one decode). Stops where decoding stops, which for a
        damaged file is before ``info.frames``."""
        if int(self._cap.get(cv2.CAP_PROP_POS_FRAMES)) != 0:
            self._reopen()
        while True:
            ok, frame_H_W_C = self._cap.read()
            if not ok:
                return
            yield frame_H_W_C

    def frame_count(self) -> int:
        """Frames in the clip: the container's count, or counted with ``grab()`` when the
        container does not say (some streams report 0)."""
        if self.info.frames > 0:
            return self.info.frames
        self._reopen()
        count = 0
        while self._cap.grab():
            count += 1
        self._reopen()
        return count

    def _seek(self, index: int) -> bool:
        self._cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        return int(self._cap.get(cv2.CAP_PROP_POS_FRAMES)) == index

    def _reopen(self) -> None:
        self._cap.release()
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            raise VideoError(f"{self.path}: cannot reopen video")


def read_clip(path: str | Path, start: int, count: int) -> tuple[np.ndarray, VideoInfo]:
    """uint8 RGB ``[count, H, W, 3]`` frames from ``start``, and the clip's info."""
    with VideoReader(path) as reader:
        return reader.read(start, count), reader.info


def shrink_for_hint(frames_T_H_W_C: np.ndarray, fit: Fit) -> np.ndarray:
    """Frames downscaled with INTER_AREA to the fitted size when larger than the bucket box.

    The reference computes edge/blur hints on frames already brought inside the target box, so
    hint thresholds act at the resolution the model sees; smaller frames are left as they are.
    """
    if not fit.shrinks or not fit.resized:
        return frames_T_H_W_C
    size = (fit.scaled_width, fit.scaled_height)  # cv2 wants (width, height)
    out_T_H_W_C = np.empty((len(frames_T_H_W_C), size[1], size[0], 3), dtype=np.uint8)
    for t, frame_H_W_C in enumerate(frames_T_H_W_C):
        cv2.resize(frame_H_W_C, size, dst=out_T_H_W_C[t], interpolation=cv2.INTER_AREA)
    return out_T_H_W_C


def fit_frames(frames_T_H_W_C: np.ndarray, fit: Fit,
               chunk_frames: int = RESIZE_CHUNK_FRAMES) -> torch.Tensor:
    """uint8 ``[C, T, H_t, W_t]``: frames resized to the fitted size, then reflection-padded.

    Resize: antialiased bicubic on float32, clamped to [0, 255] and rounded (torchvision's
    uint8 behaviour), skipped when the size is already right. Padding: centred, ``reflect``
    (mirror without repeating the border) on each axis, ``replicate`` on an axis whose pad is
    as large as the image side (reflect cannot pad that much).
    """
    T, H, W, C = frames_T_H_W_C.shape
    # A hint computed on shrunk frames (see shrink_for_hint) is already at the fitted size.
    if (W, H) not in {(fit.source_width, fit.source_height), (fit.scaled_width, fit.scaled_height)}:
        raise ValueError(f"frames are {W}x{H}, fit expects {fit.source_width}x"
                         f"{fit.source_height} or {fit.scaled_width}x{fit.scaled_height}")
    out_C_T_H_W = torch.empty((C, T, fit.target_height, fit.target_width), dtype=torch.uint8)
    frames = torch.from_numpy(np.ascontiguousarray(frames_T_H_W_C))
    for t0 in range(0, T, chunk_frames):
        # Channel-major planes first: resize and pad work plane by plane, so [C, t, H, W] is as
        # good a batch as [t, C, H, W], and the result then lands in the output with plain
        # plane copies instead of a strided transpose.
        chunk_C_t_H_W = frames[t0:t0 + chunk_frames].permute(3, 0, 1, 2).contiguous()
        chunk_C_t_H_W = _resize(chunk_C_t_H_W, fit.scaled_height, fit.scaled_width)
        out_C_T_H_W[:, t0:t0 + chunk_frames] = _pad(chunk_C_t_H_W, fit)
    return out_C_T_H_W


def _resize(x_N_P_H_W: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bicubic resize of every ``H × W`` plane of a contiguous uint8 tensor."""
    if x_N_P_H_W.shape[-2:] == (height, width):
        return x_N_P_H_W
    y = F.interpolate(x_N_P_H_W.to(torch.float32), size=(height, width), mode="bicubic",
                      antialias=True, align_corners=False)
    return y.clamp_(0, 255).round_().to(torch.uint8)


def _pad(x_N_P_H_W: torch.Tensor, fit: Fit) -> torch.Tensor:
    return pad_planes(x_N_P_H_W, Padding(fit.pad_left, fit.pad_right, fit.pad_top, fit.pad_bottom))


class Padding(NamedTuple):
    """Pixels added on each side of a clip's frames to fill its bucket."""

    left: int
    right: int
    top: int
    bottom: int


def pad_planes(x_N_P_H_W: torch.Tensor, padding: Padding) -> torch.Tensor:
    """Every ``H × W`` plane padded as :func:`fit_frames` pads: ``reflect`` on each axis,
    ``replicate`` on an axis whose pad is as large as the image side."""
    h, w = x_N_P_H_W.shape[-2:]
    if padding.left or padding.right:
        mode = "reflect" if max(padding.left, padding.right) < w else "replicate"
        x_N_P_H_W = F.pad(x_N_P_H_W, (padding.left, padding.right, 0, 0), mode=mode)
    if padding.top or padding.bottom:
        mode = "reflect" if max(padding.top, padding.bottom) < h else "replicate"
        x_N_P_H_W = F.pad(x_N_P_H_W, (0, 0, padding.top, padding.bottom), mode=mode)
    return x_N_P_H_W


def padding_of(padding_mask_1_H_W: torch.Tensor) -> Padding:
    """The padding a sample's ``padding_mask`` (1 on padded pixels) records."""
    own_H_W = padding_mask_1_H_W[0] == 0
    rows = torch.nonzero(own_H_W.any(1)).flatten()
    cols = torch.nonzero(own_H_W.any(0)).flatten()
    if len(rows) == 0:
        raise ValueError("the padding mask has no pixel of the clip's own")
    height, width = own_H_W.shape
    return Padding(left=int(cols[0]), right=width - 1 - int(cols[-1]), top=int(rows[0]),
                   bottom=height - 1 - int(rows[-1]))


def padding_mask(fit: Fit) -> torch.Tensor:
    """float32 ``[1, H_t, W_t]``: 1 on padded pixels, 0 on the clip's own pixels."""
    mask_1_H_W = torch.ones((1, fit.target_height, fit.target_width), dtype=torch.float32)
    top, left = fit.pad_top, fit.pad_left
    mask_1_H_W[:, top:top + fit.scaled_height, left:left + fit.scaled_width] = 0.0
    return mask_1_H_W
