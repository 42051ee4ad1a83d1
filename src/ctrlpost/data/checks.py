"""The data checks of `ctrlpost verify`: every clip of a dataset, every problem, one pass.

Per clip (``videos/<stem>.mp4``): the file opens, its first frame and its last frame decode (a
truncated file fails one of the two), it has at least ``num_frames`` frames; its size, fps and
aspect bucket are recorded, and it is flagged as low-resolution when shorter than its bucket's
target height (it will be upscaled). Its caption ``metas/<stem>.txt`` exists and is not empty;
its embedding ``t5_xxl/<stem>.pickle`` loads with the safe unpickler, is float16 ``[L, D]`` with
the model's ``D``, and is finite. Pickles and captions without a video are listed as orphans.

Clips are checked in a thread pool: OpenCV releases the GIL while it decodes.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctrlpost.data import buckets, text
from ctrlpost.data.dataset import META_DIR, VIDEO_DIR, list_clips
from ctrlpost.data.video import VideoError, VideoReader
from ctrlpost.errors import DataError

MAX_LISTED = 20
"""Names listed per summary entry (the counts are always complete)."""


@dataclass(frozen=True)
class DataProblem:
    """One problem: the file (relative to the dataset root) and what is wrong with it."""

    path: str
    message: str


@dataclass
class ClipCheck:
    """What checking one clip found."""

    name: str
    problems: list[DataProblem] = field(default_factory=list)
    frames: int | None = None
    fps: float | None = None
    size: tuple[int, int] | None = None  # (width, height)
    bucket: str | None = None
    low_resolution: bool = False


def check_dataset(root: str | Path, *, num_frames: int, resolution: str, text_dim: int | None,
                  recipe: str = "RECIPE", max_workers: int | None = None,
                  ) -> tuple[list[DataProblem], dict[str, Any]]:
    """Every problem of the dataset at ``root``, and a summary of what is there.

    ``recipe`` is the recipe path named in the commands that fix a problem.
    """
    root = Path(root)
    if not root.is_dir():
        return [DataProblem(str(root), "dataset folder not found; run "
                                       f"`ctrlpost fetch-data {recipe}` first")], {}
    names = list_clips(root)
    if not names:
        return [DataProblem(f"{VIDEO_DIR}/", f"no .mp4 clips; run `ctrlpost fetch-data {recipe}`"
                                             " first")], {"clips": 0}
    workers = max_workers or min(8, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        checks = list(pool.map(lambda name: check_clip(
            root, name, num_frames=num_frames, resolution=resolution, text_dim=text_dim,
            recipe=recipe), names))
    problems = [p for c in checks for p in c.problems]
    return problems, _summary(checks, orphans(root, names))


def check_clip(root: Path, name: str, *, num_frames: int, resolution: str,
               text_dim: int | None, recipe: str = "RECIPE") -> ClipCheck:
    """Check one clip's video, caption and embedding."""
    check = ClipCheck(name)
    _check_video(root, check, num_frames=num_frames, resolution=resolution)
    caption = root / META_DIR / f"{name}.txt"
    rel_caption = f"{META_DIR}/{name}.txt"
    if not caption.is_file():
        check.problems.append(DataProblem(rel_caption, "missing caption (the video has none)"))
    elif not caption.read_text(encoding="utf-8", errors="replace").strip():
        check.problems.append(DataProblem(rel_caption, "empty caption"))
    message = embedding_problem(text.embedding_path(root, name), text_dim, recipe=recipe)
    if message:
        check.problems.append(DataProblem(f"{text.EMBED_DIR}/{name}.pickle", message))
    return check


def _check_video(root: Path, check: ClipCheck, *, num_frames: int, resolution: str) -> None:
    path = root / VIDEO_DIR / f"{check.name}.mp4"
    rel = f"{VIDEO_DIR}/{check.name}.mp4"

    def problem(message: str) -> None:
        check.problems.append(DataProblem(rel, message))

    if path.stat().st_size == 0:
        return problem("empty file (0 bytes)")
    try:
        with VideoReader(path) as reader:
            info = reader.info
            check.frames, check.fps = reader.frame_count(), info.fps
            if info.width <= 0 or info.height <= 0:
                return problem(f"invalid frame size {info.width}x{info.height}")
            check.size = (info.width, info.height)
            fit = buckets.fit(resolution, info.width, info.height)
            check.bucket = fit.bucket
            check.low_resolution = info.height < fit.target_height
            reader.read_one(0)
            if check.frames < num_frames:
                return problem(f"{check.frames} frames, fewer than data.num_frames={num_frames}")
            try:
                reader.read_one(check.frames - 1)
            except VideoError as exc:
                reason = exc.message.removeprefix(f"{path}: ")
                return problem(f"last frame ({check.frames - 1}) does not decode, the file is "
                               f"damaged or truncated: {reason}")
    except VideoError as exc:
        problem(exc.message.removeprefix(f"{path}: "))


def embedding_problem(path: Path, text_dim: int | None, *, recipe: str = "RECIPE") -> str | None:
    """Why the embedding at ``path`` is unusable, or None."""
    if not path.is_file():
        return f"missing T5 embedding; run `ctrlpost embed {recipe}`"
    try:
        embedding_L_D = text.read_embedding(path, dim=text_dim)
    except DataError as exc:
        return exc.message.removeprefix(f"{path}: ") + f" (re-create: `ctrlpost embed {recipe}`)"
    if embedding_L_D.dtype != np.float16:
        return (f"dtype {embedding_L_D.dtype}, the reference format is float16; delete it and "
                f"run `ctrlpost embed {recipe}`")
    return None


def orphans(root: Path, names: list[str]) -> list[str]:
    """Embeddings and captions whose video does not exist (relative paths)."""
    known = set(names)
    found = [f"{text.EMBED_DIR}/{p.name}" for p in sorted((root / text.EMBED_DIR).glob("*.pickle"))
             if p.stem not in known]
    found += [f"{META_DIR}/{p.name}" for p in sorted((root / META_DIR).glob("*.txt"))
              if p.stem not in known]
    return found


def _summary(checks: list[ClipCheck], orphan_paths: list[str]) -> dict[str, Any]:
    frames = [c.frames for c in checks if c.frames]
    sizes = Counter(f"{c.size[0]}x{c.size[1]}" for c in checks if c.size)
    low = [c.name for c in checks if c.low_resolution]
    return {
        "clips": len(checks),
        "ok": sum(not c.problems for c in checks),
        "frames": [min(frames), max(frames)] if frames else None,
        "resolutions": dict(sizes.most_common()),
        "fps": sorted({round(c.fps, 3) for c in checks if c.fps}),
        "buckets": dict(Counter(c.bucket for c in checks if c.bucket).most_common()),
        "low_resolution": len(low),
        "low_resolution_clips": low[:MAX_LISTED],
        "orphans": len(orphan_paths),
        "orphan_files": orphan_paths[:MAX_LISTED],
    }
