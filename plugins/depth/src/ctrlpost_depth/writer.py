"""Writing ``depth/<clip>.mp4``: depth maps to grey levels, then a lossless H.264 file.

Levels (:func:`depth_levels`): uint8 maps are kept as they are; floating maps get one min-max
over the whole clip (not per frame) to 0..255, truncated to integers, computed in the array's
own dtype. With float16 maps (what the reference's depth producer holds) the levels equal that
producer's; it adds ``1e-8`` to the range, which float16 cannot represent, so leaving it out
changes nothing there and lets the largest value of a float64 map reach 255 too.

File (:func:`write_depth_video`): the grey frames go to the ``ffmpeg`` binary that
``imageio-ffmpeg`` ships and are encoded by libx264 with ``-qp 0`` (lossless) as full-range
yuv444p: luma is the level itself, chroma is neutral. OpenCV decodes every pixel back to the
written level, in all three channels. (The ``gray`` pixel format is lossless too, but OpenCV
4.11 fails to convert its frames of odd height to BGR.) The reference wrote lossy yuv420p H.264
instead; this plugin's README says what that loses.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import numpy as np

from ctrlpost.modalities import HintFileError


def depth_levels(depth_T_H_W: np.ndarray, *, near_is_large: bool = True) -> np.ndarray:
    """uint8 ``[T, H, W]`` grey levels of a clip's depth maps, near = bright.

    ``near_is_large``: whether larger values are nearer (relative inverse depth, as Depth
    Anything predicts); pass False for metric depth, whose values are then negated before the
    min-max (uint8 maps are inverted as ``255 - level``). A constant floating map gives 0.
    """
    depth = np.asarray(depth_T_H_W)
    if depth.ndim != 3:
        raise ValueError(f"depth maps must be [T, H, W], got shape {list(depth.shape)}")
    if depth.dtype == np.uint8:
        return depth.copy() if near_is_large else 255 - depth
    if not np.issubdtype(depth.dtype, np.floating):
        raise ValueError(f"depth maps must be uint8 levels or floating depth, got {depth.dtype}")
    if not np.isfinite(depth).all():
        raise ValueError("depth maps contain NaN or infinite values")
    if not near_is_large:
        depth = -depth
    low, high = depth.min(), depth.max()
    if high == low:
        return np.zeros(depth.shape, dtype=np.uint8)
    return ((depth - low) / (high - low) * 255.0).astype(np.uint8)


def write_depth_video(path: str | Path, depth_T_H_W: np.ndarray, *, fps: float = 24.0,
                      near_is_large: bool = True) -> Path:
    """Write a clip's depth maps as ``path`` (an mp4), grey in 3 channels, near = bright.

    ``depth_T_H_W``: uint8 levels or floating depth (see :func:`depth_levels`). The frames keep
    their exact size (odd sides too) and ``fps`` should be the clip's. Written under a temporary
    name and renamed, so a reader never sees half a file. Raises :class:`HintFileError` when
    ffmpeg fails.
    """
    import imageio_ffmpeg  # lazy: only the annotation step writes videos

    levels_T_H_W = np.ascontiguousarray(depth_levels(depth_T_H_W, near_is_large=near_is_large))
    frames, height, width = levels_T_H_W.shape
    if frames == 0:
        raise ValueError("no depth frames to write")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temp name of the `.*.tmp` form: `ctrlpost annotate` sweeps those a killed run leaves.
    partial = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{width}x{height}", "-r", repr(float(fps)),
        "-i", "-",
        "-an", "-vf", "scale=out_range=full", "-c:v", "libx264", "-qp", "0",
        "-pix_fmt", "yuv444p", "-color_range", "pc", "-f", "mp4", str(partial),
    ]
    try:
        result = subprocess.run(command, input=levels_T_H_W.tobytes(), capture_output=True)
        if result.returncode != 0:
            lines = result.stderr.decode(errors="replace").strip().splitlines() or ["no message"]
            raise HintFileError(f"{path}: ffmpeg could not write the depth video: {lines[-1]}")
        with open(partial, "rb") as written:
            os.fsync(written.fileno())  # on disk before the rename makes it the file
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
