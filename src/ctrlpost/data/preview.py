"""`verify --preview`: a contact sheet of training samples, frames above their hints.

Each clip gets a caption line (name, bucket, hint draw), a row of frames spread over the sample
and the matching row of hint frames. The samples are the real training samples of epoch 0 (same
decode, bucket fit and hint draw), so the sheet shows exactly what the model will see.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ctrlpost.data.dataset import BadSampleError, ClipDataset, build_dataset
from ctrlpost.errors import DataError
from ctrlpost.files import write_bytes_atomic

if TYPE_CHECKING:
    from ctrlpost.recipe import ControlSection, DataSection

LABEL_HEIGHT = 22
GAP = 4


def write_preview(out: str | Path, *, data: DataSection, control: ControlSection, seed: int,
                  clips: int = 3, frames: int = 4) -> list[str]:
    """Write the contact sheet of a recipe's data to ``out`` (PNG/JPEG by suffix); returns the
    clips shown."""
    dataset = build_dataset(data, control, seed=seed)
    sheet_H_W_C, shown = contact_sheet(dataset, clips=clips, frames=frames)
    write_image(out, sheet_H_W_C)
    return shown


def contact_sheet(dataset: ClipDataset, *, clips: int = 3, frames: int = 4,
                  thumb_width: int = 320) -> tuple[np.ndarray, list[str]]:
    """uint8 RGB sheet of the first ``clips`` usable samples (bad ones are passed over)."""
    blocks: list[np.ndarray] = []
    shown: list[str] = []
    for index in range(len(dataset)):
        if len(shown) == clips:
            break
        try:
            sample = dataset.load(index, epoch=0)
        except BadSampleError:
            continue
        blocks.append(_clip_block(sample, frames, thumb_width))
        shown.append(sample["name"])
    if not blocks:
        raise DataError(f"no usable clip under {dataset.root} to preview",
                        hint="fix the problems `ctrlpost verify` lists")
    width = max(b.shape[1] for b in blocks)
    padded = [np.pad(b, ((0, GAP), (0, width - b.shape[1]), (0, 0))) for b in blocks]
    return np.concatenate(padded, axis=0), shown


def _clip_block(sample: dict[str, Any], frames: int, thumb_width: int) -> np.ndarray:
    video_C_T_H_W = sample["video"].numpy()
    hint_C_T_H_W = sample["hint"].numpy()
    T = video_C_T_H_W.shape[1]
    picks = np.linspace(0, T - 1, num=min(frames, T)).round().astype(int)
    video_row = _row([_rgb(video_C_T_H_W[:, t]) for t in picks], thumb_width)
    hint_row = _row([_rgb(hint_C_T_H_W[:, t]) for t in picks], thumb_width)
    label = np.zeros((LABEL_HEIGHT, video_row.shape[1], 3), dtype=np.uint8)
    text = (f"{sample['name']}  {sample['bucket']}  start {sample['frame_start']}  "
            f"{sample['hint_key']} {json.dumps(sample['hint_draw'], separators=(',', ':'))}")
    cv2.putText(label, text[:120], (4, LABEL_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([label, video_row, np.zeros_like(video_row[:GAP]), hint_row], axis=0)


def _rgb(frame_C_H_W: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` of a 1-, 3- or more-channel frame (extra channels are not shown)."""
    frame_H_W_C = np.moveaxis(frame_C_H_W, 0, -1)
    if frame_H_W_C.shape[-1] == 1:
        return np.repeat(frame_H_W_C, 3, axis=-1)
    return np.ascontiguousarray(frame_H_W_C[..., :3])


def _row(frames_H_W_C: list[np.ndarray], thumb_width: int) -> np.ndarray:
    H, W = frames_H_W_C[0].shape[:2]
    size = (thumb_width, max(1, round(H * thumb_width / W)))
    thumbs = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames_H_W_C]
    gap = np.zeros((size[1], GAP, 3), dtype=np.uint8)
    parts: list[np.ndarray] = []
    for thumb in thumbs:
        parts += [thumb, gap]
    return np.concatenate(parts[:-1], axis=1)


def write_image(out: str | Path, image_H_W_C: np.ndarray) -> None:
    """Encode an RGB image by the file's suffix and write it atomically."""
    path = Path(out)
    suffix = path.suffix.lower() or ".png"
    ok, encoded = cv2.imencode(suffix, cv2.cvtColor(image_H_W_C, cv2.COLOR_RGB2BGR))
    if not ok:
        raise DataError(f"{path}: cannot encode an image with suffix {suffix!r}",
                        hint="use a .png or .jpg file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, encoded.tobytes())
