"""Boxes on the first frame tracked through a clip: SAM2's video model (transformers).

Each box prompts one object on frame 0 (SAM2's box prompt: its two corners as points labelled
2 and 3); :func:`track` then propagates every object forward through all frames, as the
reference's helper does with ``SAM2VideoPredictor``, and keeps each object's mask logits above 0
after resizing them bilinearly to the clip's size.

SAM2's image encoder reads ``batch_size`` frames per call, just before propagation reaches them:
a frame's image features depend on that frame alone (not on the objects nor on the memory of
earlier frames), so they are computed ahead and left in the inference session's feature cache,
where the model looks before it encodes a frame itself. The rest of each step (memory attention,
mask decoder, memory encoder) depends on the previous frame and runs one frame at a time.

transformers' ``Sam2VideoProcessor`` prepares frames and prompts this way too, but cannot be
built without torchvision (its image processor requires it), which ctrlpost does not install;
so the frames are resized and normalised here with the settings of the model folder's video
processor (``Sam2VideoVideoProcessor``, which loads without torchvision), and the box prompts are
given to transformers' ``Sam2VideoInferenceSession`` as the processor gives them.

Masks are kept bit-packed (``np.packbits`` along the width): a whole-clip boolean mask per
object would take ``T*H*W`` bytes each. torch and transformers are imported when a tracker is
loaded, never at module import.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

# SAM2's point labels for a box's top-left and bottom-right corners.
BOX_CORNER_LABELS = (2, 3)


@dataclass(frozen=True, eq=False)
class Tracker:
    """A loaded SAM2 video model and the frame preparation of its video processor."""

    model: Any
    size_hw: tuple[int, int]  # the model's input frame size
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float  # uint8 -> [0, 1]
    device: str
    dtype: torch.dtype


@dataclass(frozen=True, eq=False)
class PackedMasks:
    """Every object's boolean masks over a clip, bit-packed along the width."""

    bits_N_T_H_Wb: np.ndarray  # uint8, np.packbits of masks [N, T, H, W] along W
    width: int

    def mask(self, index: int) -> np.ndarray:
        """Object ``index``'s boolean mask ``[T, H, W]``."""
        return np.unpackbits(self.bits_N_T_H_Wb[index], axis=-1, count=self.width).view(bool)


def load_tracker(folder: Path, device: str, dtype: torch.dtype) -> Tracker:
    """SAM2's video model and its video processor's settings from a local folder."""
    from transformers import Sam2VideoModel
    from transformers.models.sam2_video.video_processing_sam2_video import (
        Sam2VideoVideoProcessor,
    )

    video_processor = Sam2VideoVideoProcessor.from_pretrained(folder)
    model: Any = Sam2VideoModel.from_pretrained(folder, dtype=dtype)
    size = video_processor.size
    return Tracker(
        model=model.to(device).eval(),
        size_hw=(int(size["height"]), int(size["width"])),
        mean=tuple(float(v) for v in video_processor.image_mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in video_processor.image_std),  # type: ignore[arg-type]
        rescale=float(video_processor.rescale_factor),
        device=device,
        dtype=dtype,
    )


def track(tracker: Tracker, frames_T_H_W_C: np.ndarray,
          boxes_xyxy: Sequence[Sequence[float]], batch_size: int) -> PackedMasks:
    """Masks of the objects the boxes (pixels of frame 0) outline, over every frame.

    Frames are prepared ``batch_size`` at a time and kept on the CPU until the model reads them,
    so the GPU holds no copy of the whole clip; the image encoder reads them ``batch_size`` at a
    time too. On the CPU that gives exactly the masks of one frame per call (the tests compare);
    on CUDA a batch may get other float16 kernels, whose rounding can move boundary pixels
    (``plugins/seg/bench/annotate_speed.py`` counts them).
    """
    import torch
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

    num_frames, height, width = frames_T_H_W_C.shape[:3]
    step = max(1, batch_size)
    packed = np.zeros((len(boxes_xyxy), num_frames, height, (width + 7) // 8), dtype=np.uint8)
    if not len(boxes_xyxy):
        return PackedMasks(packed, width)
    session = Sam2VideoInferenceSession(
        video_height=height, video_width=width, inference_device=tracker.device,
        inference_state_device=tracker.device, video_storage_device="cpu", dtype=tracker.dtype,
        max_vision_features_cache_size=step)
    with torch.inference_mode():
        for start in range(0, num_frames, step):
            chunk = pixel_values(tracker, frames_T_H_W_C[start:start + step])
            for offset, frame in enumerate(chunk.cpu()):
                session.add_new_frame(frame, start + offset)
        _prompt_boxes(session, tracker, boxes_xyxy, height, width)
        propagation = tracker.model.propagate_in_video_iterator(session, start_frame_idx=0)
        for start in range(0, num_frames, step):
            frames = range(start, min(start + step, num_frames))
            _encode_frames(session, tracker, frames)
            for output in itertools.islice(propagation, len(frames)):  # frame by frame, in order
                logits_N_1_h_w = output.pred_masks.float()
                masks_N_H_W = torch.nn.functional.interpolate(
                    logits_N_1_h_w, (height, width), mode="bilinear", align_corners=False,
                )[:, 0] > 0
                packed[:, output.frame_idx] = np.packbits(masks_N_H_W.cpu().numpy(), axis=-1)
    return PackedMasks(packed, width)


def _encode_frames(session: Any, tracker: Tracker, frames: range) -> None:
    """SAM2's image features of ``frames`` in one call, cached in ``session`` for propagation.

    The cache then holds exactly these frames: propagation has passed the earlier ones and never
    reads their image features again.
    """
    import torch

    pixels_B_C_h_w = torch.stack([session.get_frame(index) for index in frames])
    features = tracker.model.get_image_features(pixels_B_C_h_w, return_dict=True)
    session.cache.clear_all()
    for offset, index in enumerate(frames):
        # Levels are [h*w, B, C]; slicing B keeps the strides of the model's own one-frame call.
        session.cache.cache_vision_features(index, {
            "vision_feats": [level[:, offset:offset + 1] for level in features.fpn_hidden_states],
            "vision_pos_embeds": [level[:, offset:offset + 1]
                                  for level in features.fpn_position_encoding],
        })


def pixel_values(tracker: Tracker, frames_T_H_W_C: np.ndarray) -> torch.Tensor:
    """RGB uint8 frames ``[T, H, W, 3]`` as the model reads them: ``[T, 3, h, w]`` in its dtype.

    As the video processor: resized bilinearly with antialiasing to its size (aspect not kept),
    kept in 0..255, then scaled and normalised by its mean and std.
    """
    import torch

    x_T_C_H_W = torch.from_numpy(np.ascontiguousarray(frames_T_H_W_C)).to(tracker.device)
    x_T_C_H_W = x_T_C_H_W.permute(0, 3, 1, 2).float()
    if tuple(x_T_C_H_W.shape[-2:]) != tracker.size_hw:
        x_T_C_H_W = torch.nn.functional.interpolate(
            x_T_C_H_W, tracker.size_hw, mode="bilinear", align_corners=False, antialias=True)
        x_T_C_H_W = x_T_C_H_W.round().clamp(0, 255)  # the processor resizes uint8 frames
    mean = torch.tensor(tracker.mean, device=x_T_C_H_W.device).view(1, 3, 1, 1)
    std = torch.tensor(tracker.std, device=x_T_C_H_W.device).view(1, 3, 1, 1)
    return ((x_T_C_H_W * tracker.rescale - mean) / std).to(tracker.dtype)


def _prompt_boxes(session: Any, tracker: Tracker, boxes_xyxy: Sequence[Sequence[float]],
                  height: int, width: int) -> None:
    """Object k of the session is prompted on frame 0 by box k (pixel corners of the clip)."""
    import torch

    scale = torch.tensor([tracker.size_hw[1] / width, tracker.size_hw[0] / height])
    labels_1_1_2 = torch.tensor([[BOX_CORNER_LABELS]], dtype=torch.int32)
    for obj_id, box in enumerate(boxes_xyxy):
        corners_1_1_2_2 = (torch.tensor(box, dtype=torch.float32).view(2, 2) * scale)[None, None]
        obj_idx = session.obj_id_to_idx(obj_id)
        session.add_point_inputs(obj_idx, 0, {"point_coords": corners_1_1_2_2,
                                              "point_labels": labels_1_1_2})
        session.remove_mask_inputs(obj_idx, 0)
    session.obj_with_new_inputs = list(range(len(boxes_xyxy)))
