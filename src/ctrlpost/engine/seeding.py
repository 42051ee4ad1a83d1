"""Torch generators that are pure functions of integers, for every random draw of the engine
(training noise, validation noise, synthetic clips): nothing random has to be checkpointed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def seeded_generator(entropy: Sequence[int], device: torch.device, *,
                     stream: int | None = None) -> torch.Generator:
    """A generator on ``device`` seeded from ``entropy``; ``stream`` keeps draws apart that
    would otherwise share entropy (numpy's SeedSequence pads short entropy with zeros)."""
    spawn_key = () if stream is None else (stream,)
    sequence = np.random.SeedSequence(list(entropy), spawn_key=spawn_key)
    value = int(sequence.generate_state(1, dtype=np.uint64)[0]) & ((1 << 63) - 1)
    return torch.Generator(device=device).manual_seed(value)
