"""How the video tokenizer maps pixels to latents (Cosmos-Tokenize1-CV8x8x8, every flavour).

Causal in time: pixel frame 0 becomes latent frame 0, then every ``TEMPORAL_COMPRESSION``
frames one more, so a clip has ``1 + 8k`` frames; ``SPATIAL_COMPRESSION`` pixels per latent
along height and width. Plain integers, importing nothing: the recipe's checks, the memory
planner, the model code and the engine all read them here.
"""

from __future__ import annotations

SPATIAL_COMPRESSION = 8
"""Pixels per latent along height and along width."""
TEMPORAL_COMPRESSION = 8
"""Pixel frames per latent frame after the first."""


def latent_frames(pixel_frames: int) -> int:
    """Latent frames of a clip of ``pixel_frames`` frames: (121 - 1) / 8 + 1 = 16."""
    return (pixel_frames - 1) // TEMPORAL_COMPRESSION + 1


def is_causal_frame_count(pixel_frames: int) -> bool:
    """Whether ``pixel_frames`` is ``1 + 8k``, a whole number of latent frames."""
    return pixel_frames >= 1 and (pixel_frames - 1) % TEMPORAL_COMPRESSION == 0
