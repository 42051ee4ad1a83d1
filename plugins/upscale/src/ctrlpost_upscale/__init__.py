"""The ``upscale`` control modality: Cosmos-Transfer1's 4K-upscaler hint.

Each sample trains on a random crop of the clip at full resolution (the crop replaces the clip's
frames); the hint is that crop shrunk by a random factor and enlarged back.

Registered through the ``ctrlpost`` entry-point group; this module is the plugin. Importing it
loads neither torch nor cv2 (torch is imported when a hint is rendered).
"""

from __future__ import annotations

from ctrlpost.modalities import ExactOn, Modality, hookimpl
from ctrlpost_upscale.crop import Crop, aspect_bucket, crop_size, locate
from ctrlpost_upscale.params import ASPECT_RATIOS, CROP_SIZES_720, UpscaleParams
from ctrlpost_upscale.resize import down_up
from ctrlpost_upscale.upscale import UpscaleHints, build_generator

__all__ = ["ASPECT_RATIOS", "CROP_SIZES_720", "UPSCALE", "Crop", "UpscaleHints", "UpscaleParams",
           "aspect_bucket", "build_generator", "crop_size", "down_up", "locate"]

UPSCALE = Modality(
    name="upscale",
    summary="A random full-resolution crop, shrunk and enlarged back; the crop is the target "
            "(control_input_upscale)",
    params_model=UpscaleParams,
    build_generator=build_generator,
    hint_channels=3,
    hint_key="control_input_upscale",
    # Compared with torchvision's resize (the reference's call) on torch 2.13 only.
    exact_on=(ExactOn("torch", "torch", ">=2.13,<2.14",
                      why="compared with the reference's torchvision resize on torch 2.13 only"),),
    replaces_video=True,
    # Released, but whether it was trained with this hint is not established.
    released_control_file="4kupscaler_control.pt",
)


@hookimpl
def ctrlpost_register_modalities() -> list[Modality]:
    """Provide the ``upscale`` modality."""
    return [UPSCALE]
