"""Parameters of the ``edge`` modality and the reference's Canny threshold presets."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

EdgePreset = Literal["random", "none", "very_low", "low", "medium", "high", "very_high"]
PRESETS: tuple[str, ...] = get_args(EdgePreset)

# (lower, upper) Canny thresholds of the reference's fixed strengths (inference only).
PRESET_THRESHOLDS: dict[str, tuple[int, int]] = {
    "none": (20, 50),
    "very_low": (20, 50),
    "low": (50, 100),
    "medium": (100, 200),
    "high": (200, 300),
    "very_high": (300, 400),
}

# The reference caps the random upper threshold at 255.
UPPER_CAP = 255


class EdgeParams(BaseModel):
    """How the ``edge`` hint picks its Canny thresholds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: EdgePreset = Field(
        default="random",
        description=(
            "'random' draws thresholds per clip (training, as the reference); the others are the "
            "reference's fixed inference strengths (none/very_low 20-50, low 50-100, "
            "medium 100-200, high 200-300, very_high 300-400)."
        ),
    )
    lower_range: tuple[int, int] = Field(
        default=(20, 99),
        description="Inclusive range of the random lower Canny threshold (preset 'random' only).",
    )
    diff_range: tuple[int, int] = Field(
        default=(50, 149),
        description=(
            "Inclusive range of the random gap upper - lower (preset 'random' only); "
            f"upper is capped at {UPPER_CAP}."
        ),
    )

    fidelity_tolerance: int = Field(
        default=2,
        ge=0,
        le=16,
        description=(
            "Validation only: pixels an edge of a generated frame may be off from the hint's "
            "and still count as a match in the edge F1."
        ),
    )

    @field_validator("lower_range", "diff_range")
    @classmethod
    def _ordered_in_bounds(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 0 <= low <= high <= UPPER_CAP:
            raise ValueError(f"need 0 <= low <= high <= {UPPER_CAP}, got {list(value)}")
        return value
