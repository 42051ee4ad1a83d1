"""SAM2's image encoder reading ``batch_size`` frames per call gives the frame-by-frame masks.

The tiny random models and the clip of ``test_annotate.py`` (loaded from beside this file): the
masks of :func:`ctrlpost_seg.track.track` at several batch sizes are compared with propagation
in which the model encodes every frame itself, one per call, as transformers' video model does
when nothing is cached.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ctrlpost_seg.track import (  # noqa: E402
    Tracker,
    _prompt_boxes,
    load_tracker,
    pixel_values,
    track,
)


def tiny_models() -> ModuleType:
    """``test_annotate.py``, for its tiny SAM2, clip and boxes (tests are not a package)."""
    name = "seg_tiny_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("test_annotate.py"))
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Tracker:
    folder = tmp_path_factory.mktemp("sam2")
    tiny_models().save_tiny_sam2_video(folder)
    return load_tracker(folder, "cpu", torch.float32)


def frame_by_frame(tracker: Tracker, frames: np.ndarray, boxes: list) -> np.ndarray:
    """Masks ``[N, T, H, W]`` with the model encoding each frame itself as it reaches it."""
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

    num_frames, height, width = frames.shape[:3]
    session = Sam2VideoInferenceSession(video=pixel_values(tracker, frames), video_height=height,
                                        video_width=width, dtype=tracker.dtype)
    _prompt_boxes(session, tracker, boxes, height, width)
    masks = np.zeros((len(boxes), num_frames, height, width), bool)
    with torch.inference_mode():
        for output in tracker.model.propagate_in_video_iterator(session, start_frame_idx=0):
            logits = torch.nn.functional.interpolate(
                output.pred_masks.float(), (height, width), mode="bilinear", align_corners=False)
            masks[:, output.frame_idx] = (logits[:, 0] > 0).numpy()
    return masks


@pytest.mark.parametrize("batch_size", [1, 3, 8, 100])
def test_batched_image_features_give_the_frame_by_frame_masks(tracker: Tracker,
                                                              batch_size: int) -> None:
    models = tiny_models()
    frames, boxes = models.clip(), [d.box_xyxy for d in models.BOXES]
    expected = frame_by_frame(tracker, frames, boxes)
    assert expected.any() and not expected.all()  # masks that a changed feature would move
    packed = track(tracker, frames, boxes, batch_size)
    for index in range(len(boxes)):
        np.testing.assert_array_equal(packed.mask(index), expected[index])


def test_the_image_encoder_reads_batch_size_frames_per_call(tracker: Tracker) -> None:
    models = tiny_models()
    calls: list[int] = []
    hook = tracker.model.vision_encoder.register_forward_hook(
        lambda _module, args, _output: calls.append(int(args[0].shape[0])))
    try:
        track(tracker, models.clip(), [d.box_xyxy for d in models.BOXES], batch_size=3)
    finally:
        hook.remove()
    assert calls == [3, 3, 2]  # T = 8 frames, each encoded once
