"""Making ``depth/<clip>.mp4`` for real clips (`ctrlpost annotate`): Depth Anything V2 Small.

The same steps as the reference's producer, which runs the model one frame per call; here the
frames go through the network in batches of ``batch_size`` (the image processor runs in threads
ahead of it). With ``batch_size`` 1 the levels are the reference computation's exactly; larger
batches run other float16 kernels on a GPU, which move levels by at most one:

1. each RGB frame goes to the repo's image processor as a PIL image (its PIL backend: resize
   keeping the aspect ratio to multiples of 14 near 518, bicubic; rescale; ImageNet mean/std);
2. the network predicts relative inverse depth (larger = nearer) at the processed size, in
   float16 on CUDA, float32 on CPU;
3. each prediction is resized back to the frame's size with torch's bicubic
   (``align_corners=False``, no antialias), in the same dtype;
4. :func:`~ctrlpost_depth.writer.write_depth_video` takes one min-max over the whole clip to
   0..255 (in that dtype, truncated: with float16 these are the reference's levels), grey in 3
   channels, near = bright, and writes it losslessly under a temp name renamed into place.

:func:`make_tiny` saves a small random model of the same classes and file format (what
`fetch-weights` makes for the tiny flavor), so :func:`load` reads it as it reads the release.
torch, transformers and PIL are imported inside the functions: the plugin stays cheap to import.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctrlpost.modalities import Annotator
from ctrlpost_depth.writer import write_depth_video

REPO = "depth-anything/Depth-Anything-V2-Small-hf"
"""The model the reference's producer runs (its Hugging Face repo)."""

PROCESSOR = {
    "image_processor_type": "DPTImageProcessor", "do_resize": True, "keep_aspect_ratio": True,
    "ensure_multiple_of": 14, "resample": 3, "size": {"height": 518, "width": 518},
    "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "do_pad": False,
}
"""The released repo's image processor settings (the tiny stand-in shrinks ``size`` only)."""
PROCESS_THREADS = min(8, os.cpu_count() or 1)
"""Threads running the image processor (one frame each) ahead of the network."""
TINY_SIZE = 70
"""Processed side of the tiny stand-in: 5 patches of 14, so CPU tests stay fast."""


@dataclass(frozen=True)
class DepthModel:
    """A loaded depth model: the image processor, the network on ``device`` in ``dtype``."""

    processor: Any
    network: Any
    device: Any  # torch.device
    dtype: Any  # torch.dtype


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No "Loading weights" bars or backend notices in `annotate`'s output."""
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load(folders: Mapping[str, Path], device: str, params: Any = None) -> DepthModel:
    """Depth Anything from ``folders[REPO]`` on ``device``: float16 on CUDA, float32 elsewhere.

    The image processor is the PIL one on every transformers release (what the reference's
    release of transformers ran), not the torchvision one that transformers 5 prefers.
    """
    import torch
    import transformers
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    folder = str(folders[REPO])
    where = torch.device(device)
    dtype = torch.float16 if where.type == "cuda" else torch.float32
    backend: dict[str, Any] = (
        {"backend": "pil"} if int(transformers.__version__.split(".")[0]) >= 5 else {})
    with _quiet_transformers():
        processor = AutoImageProcessor.from_pretrained(folder, **backend)
        network = AutoModelForDepthEstimation.from_pretrained(folder)
    network = network.to(device=where, dtype=dtype).eval()
    return DepthModel(processor, network, where, dtype)


def _pixels(processor: Any, frame_H_W_C: np.ndarray) -> Any:
    """The processor's ``pixel_values`` ``[1, 3, h, w]`` of one frame, given as a PIL image."""
    from PIL import Image

    return processor(images=Image.fromarray(frame_H_W_C), return_tensors="pt")["pixel_values"]


def predict(model: DepthModel, frames_T_H_W_C: np.ndarray, batch_size: int) -> np.ndarray:
    """Relative inverse depth ``[T, H, W]`` (larger = nearer) of uint8 RGB frames, at the
    frames' size, in the model's dtype (float16 on CUDA, float32 on CPU).

    The image processor (PIL, on the CPU) costs more than the network on a GPU, so frames are
    processed one per task by :data:`PROCESS_THREADS` threads (PIL and NumPy release the GIL),
    a few batches ahead of the network; each frame's pixels are what a batch call would give.
    """
    import torch
    import torch.nn.functional as F

    T, H, W = frames_T_H_W_C.shape[:3]
    batch_size = max(1, batch_size)
    ahead = batch_size + 2 * PROCESS_THREADS  # frames processed ahead of the network
    depth_T_H_W: np.ndarray | None = None
    pending: dict[int, Future[Any]] = {}
    with ThreadPoolExecutor(PROCESS_THREADS, thread_name_prefix="depth-process") as pool, \
            torch.inference_mode():
        for start in range(0, T, batch_size):
            end = min(T, start + batch_size)
            for t in range(len(pending) + start, min(T, start + ahead)):
                pending[t] = pool.submit(_pixels, model.processor, frames_T_H_W_C[t])
            pixels_B_C_h_w = torch.cat([pending.pop(t).result() for t in range(start, end)])
            pixels_B_C_h_w = pixels_B_C_h_w.to(device=model.device, dtype=model.dtype)
            predicted_B_h_w = model.network(pixel_values=pixels_B_C_h_w).predicted_depth
            resized_B_1_H_W = F.interpolate(predicted_B_h_w.unsqueeze(1), size=(H, W),
                                            mode="bicubic", align_corners=False)
            batch_B_H_W = resized_B_1_H_W[:, 0].cpu().numpy()
            if depth_T_H_W is None:
                depth_T_H_W = np.empty((T, H, W), dtype=batch_B_H_W.dtype)
            depth_T_H_W[start:end] = batch_B_H_W
    assert depth_T_H_W is not None, "a clip has frames"
    return depth_T_H_W


def annotate(model: DepthModel, frames_T_H_W_C: np.ndarray, fps: float, path: Path,
             batch_size: int) -> None:
    """Write ``path`` (``depth/<clip>.mp4``) for a clip's RGB uint8 frames ``[T, H, W, 3]``."""
    write_depth_video(path, predict(model, frames_T_H_W_C, batch_size), fps=fps)


def make_tiny(repo: str, folder: Path, *, seed: int = 0) -> None:
    """Save a random Depth Anything of tiny widths in ``folder``, as the released repo is laid
    out (``config.json``, ``model.safetensors``, ``preprocessor_config.json``): a 4-layer
    Dinov2 backbone of width 32, processed side :data:`TINY_SIZE`. Its activations and output
    are about unit size, so float16 keeps them. A pure function of ``seed``."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    if repo != REPO:
        raise ValueError(f"the depth plugin makes no stand-in for {repo!r}")
    # The released backbone's outputs: 4 stages, token sequences (not reshaped to maps).
    stages: dict[str, Any] = {"out_features": ["stage1", "stage2", "stage3", "stage4"],
                              "reshape_hidden_states": False}
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                            mlp_ratio=2, image_size=TINY_SIZE, patch_size=14, **stages)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32,
                                 neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8,
                                 head_hidden_size=8, patch_size=14)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = DepthAnythingForDepthEstimation(config).eval()
        # transformers draws every convolution from N(0, 0.02²): with these few channels the
        # signal would fade to ~1e-7 through neck and head, below float16's normal range.
        # He initialisation keeps it near unit size, so the float16 path on a GPU works too.
        with torch.no_grad():
            for module in [*network.neck.modules(), *network.head.modules()]:
                if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                    torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                    if module.bias is not None:
                        module.bias.zero_()
            probe = torch.rand(2, 3, TINY_SIZE, TINY_SIZE)
            scale = 1.0 / float(network(pixel_values=probe).predicted_depth.std())
            network.head.conv3.weight.mul_(scale)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _quiet_transformers():
        network.save_pretrained(folder)
    processor = {**PROCESSOR, "size": {"height": TINY_SIZE, "width": TINY_SIZE}}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")


ANNOTATOR = Annotator(models=(REPO,), load=load, annotate=annotate, make_tiny=make_tiny)
"""`ctrlpost annotate` for depth: Depth Anything V2 Small, the reference's producer."""
