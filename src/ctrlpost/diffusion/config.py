"""The constants of the EDM training objective, in one frozen dataclass.

Defaults are the resolved values of the Cosmos-Transfer1 7B "lvg" post-training experiment
(docs/reference.md#edm), so ``EDMConfig()`` reproduces the released objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class EDMConfig:
    """Every constant of the EDM objective used in ControlNet post-training.

    Attributes:
        sigma_data: Standard deviation of the (normalised) data; sets the preconditioning.
        p_mean: Mean of ``ln σ₀`` for the training noise levels.
        p_std: Standard deviation of ``ln σ₀``.
        adjust_video_noise: Multiply σ by √(latent frames): longer clips share more signal
            between frames, so they need more noise to be equally hard to denoise.
        sigma_min: Smallest σ of the sampler (inference only; kept for completeness).
        sigma_max: Largest σ of the sampler (inference only; kept for completeness).
        condition_frames_min: Fewest leading latent frames given as conditioning.
        condition_frames_max: Most leading latent frames given as conditioning (inclusive).
        augment_sigma_p_mean: Mean of ``ln σ_aug``, the noise put on conditioning frames.
        augment_sigma_p_std: Standard deviation of ``ln σ_aug``.
        augment_sigma_multiplier: Scale applied to σ_aug after drawing it.
        text_dropout: Probability that a sample's text embedding is zeroed (for CFG).
        loss_add_logvar: Weight the loss by the learned uncertainty ``u(σ)``
            (``L = λ·mse·e^(−u) + u``).
    """

    sigma_data: float = 0.5
    p_mean: float = 0.0
    p_std: float = 1.0
    adjust_video_noise: bool = True
    sigma_min: float = 0.0002
    sigma_max: float = 80.0
    condition_frames_min: int = 0
    condition_frames_max: int = 2
    augment_sigma_p_mean: float = -3.0
    augment_sigma_p_std: float = 2.0
    augment_sigma_multiplier: float = 1.0
    text_dropout: float = 0.2
    loss_add_logvar: bool = True

    def __post_init__(self) -> None:
        problems = []
        if not self.sigma_data > 0:
            problems.append(f"sigma_data must be > 0, got {self.sigma_data}")
        if not self.p_std >= 0 or not self.augment_sigma_p_std >= 0:
            problems.append("p_std and augment_sigma_p_std must be >= 0")
        if not 0 < self.sigma_min < self.sigma_max:
            problems.append(
                f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}"
            )
        if not 0 <= self.condition_frames_min <= self.condition_frames_max:
            problems.append(
                "need 0 <= condition_frames_min <= condition_frames_max, got "
                f"{self.condition_frames_min}, {self.condition_frames_max}"
            )
        if not 0.0 <= self.text_dropout <= 1.0:
            problems.append(f"text_dropout must be in [0, 1], got {self.text_dropout}")
        if not math.isfinite(self.augment_sigma_multiplier) or self.augment_sigma_multiplier < 0:
            problems.append("augment_sigma_multiplier must be finite and >= 0")
        if problems:
            raise ValueError("invalid EDMConfig: " + "; ".join(problems))

    def video_noise_multiplier(self, latent_frames: int) -> float:
        """The factor σ₀ is multiplied by for a clip of ``latent_frames`` latent frames."""
        if latent_frames < 1:
            raise ValueError(f"latent_frames must be >= 1, got {latent_frames}")
        return math.sqrt(latent_frames) if self.adjust_video_noise else 1.0
