"""Parameters of the ``seg`` modality."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_PROMPT = "person. car. animal. tree. building."


class SegParams(BaseModel):
    """How the ``seg`` hint picks the objects it paints, and what `ctrlpost annotate` segments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_objects: int = Field(
        default=100,
        ge=0,
        description=(
            "Most objects painted per sample. The number painted is drawn uniformly from "
            "0..min(max_objects, objects in the file), both ends included (reference: 100)."
        ),
    )
    prompt: str = Field(
        default=DEFAULT_PROMPT,
        description=(
            "What `ctrlpost annotate` segments: GroundingDINO's text prompt, object names "
            "each ended by a period (\"person. car. tree.\"). Every box found on a clip's first "
            "frame becomes one object of its seg file, named by the phrase it matched. "
            "Training does not use it."
        ),
    )

    @field_validator("prompt")
    @classmethod
    def _has_a_word(cls, prompt: str) -> str:
        if not prompt.strip(" ."):
            raise ValueError('must name at least one object, e.g. "person. car. tree."')
        return prompt
