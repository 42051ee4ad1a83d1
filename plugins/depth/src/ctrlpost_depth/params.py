"""Parameters of the ``depth`` modality: none; the hint is the per-clip depth video itself."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class DepthParams(BaseModel):
    """The ``depth`` hint takes no parameters: training reads the clip's depth video unchanged
    (no normalisation, inversion or augmentation), as the reference does."""

    model_config = ConfigDict(extra="forbid", frozen=True)
