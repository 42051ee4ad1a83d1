"""Parameters of the ``blur`` modality and the reference's fixed inference strengths."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

BlurPreset = Literal["random", "very_low", "low", "medium", "high", "very_high"]
PRESETS: tuple[str, ...] = get_args(BlurPreset)


def _bilateral_preset(d: int, sigma_color: int, sigma_space: int) -> dict[str, int]:
    return {"d": d, "sigma_color": sigma_color, "sigma_space": sigma_space, "iterations": 1}


def _preset(bilateral: dict[str, int], downscale: int, down_up_scale: int) -> dict[str, Any]:
    return {
        "combination": "bilateral",
        "downscale": downscale,
        "bilateral": bilateral,
        "gaussian": None,
        "down_up_scale": down_up_scale,
    }


_SOFT = _bilateral_preset(15, 100, 50)
_MEDIUM = _bilateral_preset(30, 150, 100)
_STRONG = _bilateral_preset(50, 300, 150)

# What ``draw`` returns for each fixed strength (the reference's inference configs:
# bilateral only, one pass; inner downscale and down-up factor per strength).
PRESET_DRAWS: dict[str, dict[str, Any]] = {
    "very_low": _preset(_SOFT, downscale=1, down_up_scale=4),
    "low": _preset(_SOFT, downscale=4, down_up_scale=4),
    "medium": _preset(_MEDIUM, downscale=2, down_up_scale=10),
    "high": _preset(_STRONG, downscale=1, down_up_scale=16),
    "very_high": _preset(_STRONG, downscale=4, down_up_scale=16),
}


class BlurParams(BaseModel):
    """How the ``blur`` (vis) hint picks its filters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: BlurPreset = Field(
        default="random",
        description=(
            "'random' draws a blur per clip (training, as the reference); the others are the "
            "reference's fixed inference strengths (bilateral only, then a down-up resize)."
        ),
    )
