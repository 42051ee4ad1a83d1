"""Parameters of the ``keypoint`` modality (defaults: the reference's training settings)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class KeypointParams(BaseModel):
    """How the ``keypoint`` hint draws its skeletons."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    confidence_threshold: float = Field(
        default=0.6,
        ge=0.0,
        le=1.0,
        description=(
            "A joint is drawn when its confidence is at least this, a link when both its "
            "joints are (reference: 0.6)."
        ),
    )
    line_width: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Thickness of the links in pixels of the clip (reference: 4).",
    )
    radius: int = Field(
        default=2,
        ge=0,
        le=64,
        description="Radius of the filled joint dots in pixels of the clip (reference: 2).",
    )
