"""The ``blur`` control modality: Cosmos-Transfer1's vis hint (blurred, down-up resized frames).

Its fidelity metric is the PSNR of the re-blurred generation against the hint
(:mod:`ctrlpost_blur.fidelity`). Registered through the ``ctrlpost`` entry-point group; this
module is the plugin. Importing it loads neither torch nor cv2 (both are imported when a hint
is rendered).
"""

from __future__ import annotations

from ctrlpost.modalities import ExactOn, Modality, hookimpl
from ctrlpost_blur.blur import COMBINATIONS, BlurHints, build_generator
from ctrlpost_blur.downup import down_up
from ctrlpost_blur.fidelity import BlurFidelity, build_fidelity, psnr
from ctrlpost_blur.params import PRESET_DRAWS, PRESETS, BlurParams

__all__ = [
    "BLUR",
    "COMBINATIONS",
    "PRESETS",
    "PRESET_DRAWS",
    "BlurFidelity",
    "BlurHints",
    "BlurParams",
    "build_fidelity",
    "build_generator",
    "down_up",
    "psnr",
]

BLUR = Modality(
    name="blur",
    summary="Blurred, down-up resized frames; blur drawn per clip (control_input_vis)",
    params_model=BlurParams,
    build_generator=build_generator,
    hint_channels=3,
    hint_key="control_input_vis",
    presets=PRESETS,
    # The reference's environment pins OpenCV 4.10 / 4.11. bilateralFilter gives values one
    # level apart on 4.12-5.0 and again on 5.1; the other OpenCV calls agree on 4.10-5.1.
    exact_on=(
        ExactOn(
            "OpenCV", "cv2", ">=4.10,<4.12",
            why="bilateralFilter differs by one level on some values in other OpenCV releases",
        ),
    ),
    released_control_file="vis_control.pt",  # the reference's "vis" control
)


@hookimpl
def ctrlpost_register_modalities() -> list[Modality]:
    """Provide the ``blur`` modality."""
    return [BLUR]


@hookimpl
def ctrlpost_fidelity_metric(modality: str, params: BlurParams) -> BlurFidelity | None:
    """The ``blur`` metric (PSNR of the re-blurred frames) for the ``blur`` modality."""
    return build_fidelity(params) if modality == BLUR.name else None
