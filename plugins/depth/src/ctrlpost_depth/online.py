"""The depth hint made in the training process (``source = "online"``).

The annotator's own steps (:func:`ctrlpost_depth.annotator.predict`, then
:func:`ctrlpost_depth.writer.depth_levels`) on the sample's frames, grey in 3 channels as the
decoded file is: the depth video is lossless, so for the same frames the online hint and the
file's hint are the same levels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ctrlpost.modalities import OnlineHint
from ctrlpost_depth import annotator
from ctrlpost_depth.params import DepthParams
from ctrlpost_depth.writer import depth_levels


def render(model: annotator.DepthModel, frames_T_H_W_C: np.ndarray,
           params: DepthParams) -> np.ndarray:
    """uint8 ``[T, H, W, 3]``: the depth levels of the frames, near = bright, in 3 channels."""
    levels_T_H_W = depth_levels(annotator.predict(model, frames_T_H_W_C, params.batch_size))
    return np.repeat(levels_T_H_W[..., None], 3, axis=3)


def selected(params: Any) -> bool:
    """Whether the recipe asks for the online hint."""
    return bool(params.source == "online")


ONLINE_DEPTH = OnlineHint(models=annotator.ANNOTATOR.models, load=annotator.load,
                          render=render, selected=selected)
"""`control.params.source = "online"`: Depth Anything V2 Small run by each rank."""
