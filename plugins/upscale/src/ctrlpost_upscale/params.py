"""Parameters of the ``upscale`` modality and the reference's crop sizes."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

# The reference's aspect-ratio buckets, in its order (ties go to the first): a frame belongs to
# the ratio r nearest to its w/h by (w/h - r)².
ASPECT_RATIOS: dict[str, float] = {
    "16:9": 16 / 9,
    "4:3": 4 / 3,
    "1:1": 1.0,
    "3:4": 3 / 4,
    "9:16": 9 / 16,
}

# (width, height) of the reference's training crop for each bucket: its "720" sizes, used
# whatever resolution the job trains at.
CROP_SIZES_720: dict[str, tuple[int, int]] = {
    "16:9": (1280, 704),
    "4:3": (960, 704),
    "1:1": (960, 960),
    "3:4": (704, 960),
    "9:16": (704, 1280),
}

MAX_DOWNSCALE = 64


class UpscaleParams(BaseModel):
    """How the ``upscale`` hint crops the clip and degrades the crop."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    crop_size: tuple[PositiveInt, PositiveInt] | None = Field(
        default=None,
        description=(
            "Width and height in pixels of the training crop for every clip, e.g. [1280, 704]. "
            "Omitted: the reference's size for the clip's aspect ratio (16:9 1280x704, "
            "4:3 960x704, 1:1 960x960, 3:4 704x960, 9:16 704x1280)."
        ),
    )
    downscale_factors: tuple[int, ...] = Field(
        default=(6, 3, 2),
        description=(
            "The crop is shrunk to 1/factor of its size (then enlarged back) with one of these "
            f"factors (1..{MAX_DOWNSCALE}), drawn per clip; the reference's are 6, 3 and 2."
        ),
    )
    downscale_probabilities: tuple[float, ...] = Field(
        default=(0.3, 0.5, 0.2),
        description=(
            "Probability of each of downscale_factors, in the same order; they sum to 1 "
            "(the reference's: 0.3, 0.5, 0.2)."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> UpscaleParams:
        factors, probabilities = self.downscale_factors, self.downscale_probabilities
        if not factors or len(factors) != len(probabilities):
            raise ValueError(
                "downscale_factors and downscale_probabilities need the same, non-zero length, "
                f"got {len(factors)} and {len(probabilities)}"
            )
        if any(not 1 <= f <= MAX_DOWNSCALE for f in factors) or len(set(factors)) != len(factors):
            raise ValueError(f"downscale_factors must be distinct integers in 1..{MAX_DOWNSCALE}, "
                             f"got {list(factors)}")
        if any(p < 0 for p in probabilities) or not math.isclose(sum(probabilities), 1.0,
                                                                 abs_tol=1e-6):
            raise ValueError("downscale_probabilities must be >= 0 and sum to 1, got "
                             f"{list(probabilities)}")
        if self.crop_size is not None and min(self.crop_size) < max(factors):
            raise ValueError(f"crop_size {list(self.crop_size)} is too small for downscale "
                             f"factor {max(factors)}")
        return self
