"""Parameters of the ``seg`` modality."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SegParams(BaseModel):
    """How the ``seg`` hint picks the objects it paints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_objects: int = Field(
        default=100,
        ge=0,
        description=(
            "Most objects painted per sample. The number painted is drawn uniformly from "
            "0..min(max_objects, objects in the file), both ends included (reference: 100)."
        ),
    )
