"""Parameters of the ``depth`` modality: where the hint comes from."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DepthParams(BaseModel):
    """Where the ``depth`` hint comes from.

    ``source = "file"`` (the reference's way): training reads the clip's depth video
    ``depth/<clip>.mp4`` unchanged (no normalisation, inversion or augmentation), made by
    `ctrlpost annotate`. ``source = "online"``: the training process runs the same model on the
    sampled frames (same levels: one min-max over the window instead of the clip), so no file
    is needed; ``batch_size`` frames go through the network per call.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["file", "online"] = "file"
    batch_size: int = Field(default=16, ge=1, le=1024)
