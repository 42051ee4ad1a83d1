"""The data checks of `ctrlpost verify`: every clip of a dataset, every problem, one pass.

Per clip (``videos/<stem>.mp4``): the file opens, its first frame and its last frame decode (a
truncated file fails one of the two), it has at least ``num_frames`` frames; its size, fps and
aspect bucket are recorded, and it is flagged as low-resolution when shorter than its bucket's
target height (it will be upscaled). Its caption ``metas/<stem>.txt`` exists and is not empty;
its embedding ``t5_xxl/<stem>.pickle`` loads with the safe unpickler, is float16 ``[L, D]`` with
the model's ``D``, and is finite. Pickles and captions without a video are listed as orphans.

Decoding two frames does not notice bytes damaged in between: a codec conceals most of them and
returns garbage frames. So a clip that the dataset's ``manifest.jsonl`` vouches for (``fetch-data``
hashed it when it committed it) must still have that sha256; hashing is cheap next to decoding.
A clip that does not gets that one line, which names the fix; whatever else is wrong with its
video follows from it.
``deep=True`` also decodes every frame of every clip, which catches damage in clips nobody hashed
(a local dataset without a manifest) as far as it breaks decoding.

Clips are checked in a thread pool: OpenCV releases the GIL while it decodes, hashlib while it
hashes.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctrlpost.data import buckets, text
from ctrlpost.data.layout import EMBEDDING_SUFFIX, MANIFEST, DatasetLayout
from ctrlpost.data.video import VideoError, VideoReader
from ctrlpost.errors import DataError
from ctrlpost.modalities import ClipInfo, HintFile

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
    hashed: bool = False


def check_dataset(root: str | Path, *, num_frames: int, resolution: str, text_dim: int | None,
                  recipe: str = "RECIPE", max_workers: int | None = None,
                  sha256: Mapping[str, str] | None = None, deep: bool = False,
                  hint_files: Sequence[HintFile] = (),
                  ) -> tuple[list[DataProblem], dict[str, Any]]:
    """Every problem of the dataset at ``root``, and a summary of what is there.

    ``recipe`` is the recipe path named in the commands that fix a problem. ``sha256`` maps clip
    names to the hash their video must have (the manifest's; clips not in it are not hashed);
    ``deep`` decodes every frame of every clip instead of the first and the last;
    ``hint_files`` are the per-clip files the recipe's modalities read (each clip's is checked
    by its plugin, which never executes anything from the file).
    """
    root = Path(root)
    if not root.is_dir():
        return [DataProblem(str(root), "dataset folder not found; run "
                                       f"`ctrlpost fetch-data {recipe}` first")], {}
    layout = DatasetLayout(root)
    names = layout.clips()
    if not names:
        message = f"no .mp4 clips; run `ctrlpost fetch-data {recipe}` first"
        return [DataProblem(f"{layout.relative(layout.videos)}/", message)], {"clips": 0}
    workers = max_workers or min(8, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        checks = list(pool.map(lambda name: check_clip(
            root, name, num_frames=num_frames, resolution=resolution, text_dim=text_dim,
            recipe=recipe, sha256=(sha256 or {}).get(name), deep=deep,
            hint_files=hint_files), names))
    problems = [p for c in checks for p in c.problems]
    return problems, _summary(checks, orphans(root, names)) | {
        "sha256_checked": sum(c.hashed for c in checks), "deep": deep}


def check_clip(root: Path, name: str, *, num_frames: int, resolution: str,
               text_dim: int | None, recipe: str = "RECIPE", sha256: str | None = None,
               deep: bool = False, hint_files: Sequence[HintFile] = ()) -> ClipCheck:
    """Check one clip's video (against ``sha256`` when given; every frame if ``deep``), its
    caption and its embedding."""
    check = ClipCheck(name)
    layout = DatasetLayout(root)
    video = layout.video(name)
    rel_video = layout.relative(video)
    mismatch = None
    if sha256 is not None and video.stat().st_size:  # an empty file is reported as such
        check.hashed = True
        mismatch = sha256_problem(video, sha256, recipe=recipe)
    decodes = _check_video(root, check, num_frames=num_frames, resolution=resolution)
    if mismatch:
        # Not the file fetch-data checked: its other faults follow from that, and so does the fix.
        check.problems = [p for p in check.problems if p.path != rel_video]
        check.problems.append(DataProblem(rel_video, mismatch))
    elif decodes and deep and check.frames and check.size:
        message = full_decode_problem(video, frames=check.frames, size=check.size)
        if message:
            check.problems.append(DataProblem(rel_video, message))
    caption = layout.caption(name)
    rel_caption = layout.relative(caption)
    if not caption.is_file():
        check.problems.append(DataProblem(rel_caption, "missing caption (the video has none)"))
    elif not caption.read_text(encoding="utf-8", errors="replace").strip():
        check.problems.append(DataProblem(rel_caption, "empty caption"))
    embedding = layout.embedding(name)
    message = embedding_problem(embedding, text_dim, recipe=recipe)
    if message:
        check.problems.append(DataProblem(layout.relative(embedding), message))
    if decodes and check.frames and check.size:
        clip = ClipInfo(name=name, frame_count=check.frames, width=check.size[0],
                        height=check.size[1], fps=check.fps or 0.0)
        for hint_file in hint_files:
            path = hint_file.path(root, name)
            message = hint_file_problem(hint_file, path, clip, recipe=recipe)
            if message:
                check.problems.append(DataProblem(layout.relative(path), message))
    return check


def hint_file_problem(hint_file: HintFile, path: Path, clip: ClipInfo, *,
                      recipe: str) -> str | None:
    """Why the clip's hint file cannot serve training, or None (the plugin's own check)."""
    if not path.is_file():
        made_by = hint_file.made_by.replace("RECIPE", recipe)
        fix = (f"run `{made_by}`" if made_by else
               f"make one per clip in the format the {hint_file.folder} plugin's README gives")
        return f"missing {hint_file.folder} file; {fix}"
    try:
        return hint_file.check(path, clip)
    except Exception as exc:  # a plugin's check must not stop verify: its failure is the finding
        return f"cannot be checked: {type(exc).__name__}: {exc}"


def _check_video(root: Path, check: ClipCheck, *, num_frames: int, resolution: str) -> bool:
    """Open the clip, decode its first and last frames; whether it found no problem."""
    layout = DatasetLayout(root)
    path = layout.video(check.name)
    rel = layout.relative(path)

    def problem(message: str) -> bool:
        check.problems.append(DataProblem(rel, message))
        return False

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
        return problem(exc.message.removeprefix(f"{path}: "))
    return True


def full_decode_problem(path: Path, *, frames: int, size: tuple[int, int]) -> str | None:
    """Why decoding every frame of ``path`` goes wrong, or None: fewer than the ``frames`` its
    container declares decode, or one is not ``size`` (width, height)."""
    width, height = size
    decoded = 0
    fix = "the file is damaged: replace it, or delete it to train without this clip"
    try:
        with VideoReader(path) as reader:
            for frame_H_W_C in reader.decoded_frames():
                h, w = frame_H_W_C.shape[:2]
                if (w, h) != (width, height):
                    return f"frame {decoded} is {w}x{h}, the clip is {width}x{height}; {fix}"
                decoded += 1
    except VideoError as exc:
        return f"{exc.message.removeprefix(f'{path}: ')}; {fix}"
    if decoded < frames:
        return f"only {decoded} of its {frames} frames decode when every frame is read; {fix}"
    return None


def sha256_problem(path: Path, expected: str, *, recipe: str = "RECIPE") -> str | None:
    """Why ``path`` is not the file the manifest recorded (``expected`` sha256), or None.

    ``fetch-data`` keeps a clip only while its file has the recorded hash and fetches any other
    again, so running it again is the fix.
    """
    if file_sha256(path) == expected.lower():
        return None
    return (f"sha256 differs from {MANIFEST}'s: the file changed after fetch-data wrote it "
            f"(damaged or edited); run `ctrlpost fetch-data {recipe}` again (same options as "
            "before): it fetches again every clip whose file no longer matches")


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (never whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


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
    layout = DatasetLayout(root)
    embeddings = sorted(layout.embeddings.glob(f"*{EMBEDDING_SUFFIX}"))
    return [layout.relative(p) for p in [*embeddings, *layout.captions()] if p.stem not in known]


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
