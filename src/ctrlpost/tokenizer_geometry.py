"""How the video tokenizer maps pixels to latents (Cosmos-Tokenize1-CV8x8x8, every flavour).

Causal in time: pixel frame 0 becomes latent frame 0, then every ``TEMPORAL_COMPRESSION``
frames one more, so a clip has ``1 + 8k`` frames; ``SPATIAL_COMPRESSION`` pixels per latent
along height and width. Plain integers, importing nothing: the recipe's checks, the memory
planner, the model code and the engine all read them here, as they do the compiled encode's
attention slice (:data:`COMPILED_ENCODE_SCORE_BUDGET`).
"""

from __future__ import annotations

SPATIAL_COMPRESSION = 8
"""Pixels per latent along height and along width."""
TEMPORAL_COMPRESSION = 8
"""Pixel frames per latent frame after the first."""
COMPILED_ENCODE_SCORE_BUDGET = 2**30
"""Attention scores the compiled encode (``parallel.compile_tokenizer``) holds at once: its
spatial attention runs a slice of latent frames at a time (5 of a 720p clip's 16, 1.8 GiB in
bf16), where the released encoder materialises all of them."""


def latent_frames(pixel_frames: int) -> int:
    """Latent frames of a clip of ``pixel_frames`` frames: (121 - 1) / 8 + 1 = 16."""
    return (pixel_frames - 1) // TEMPORAL_COMPRESSION + 1


def is_causal_frame_count(pixel_frames: int) -> bool:
    """Whether ``pixel_frames`` is ``1 + 8k``, a whole number of latent frames."""
    return pixel_frames >= 1 and (pixel_frames - 1) % TEMPORAL_COMPRESSION == 0
