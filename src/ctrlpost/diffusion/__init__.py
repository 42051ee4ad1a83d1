"""The EDM training objective of ControlNet post-training, independent of any network.

``training_loss`` is the entry point of training, ``sample`` (:mod:`.sampler`) of generation; the
rest is exposed for tests, logging and inference.
Nothing here imports ``ctrlpost.models``, the recipe, data, engine or ``torch.distributed``.
"""

from ctrlpost.diffusion.conditioning import (
    apply_text_dropout,
    condition_mask,
    condition_network_input,
    sample_augment_sigma,
    sample_num_condition_frames,
    sample_text_keep,
)
from ctrlpost.diffusion.config import EDMConfig
from ctrlpost.diffusion.edm import (
    Preconditioning,
    denoised,
    ideal_network_output,
    latent_from_x0,
    loss_weight,
    precondition,
    sample_sigma,
    x0_from_latent,
)
from ctrlpost.diffusion.loss import Denoiser, LossOutput, NoiseDraws, draw_noise, training_loss
from ctrlpost.diffusion.sampler import (
    SOLVERS,
    GivenFrames,
    OdeSolver,
    SamplerConfig,
    guided_denoiser,
    integrate,
    karras_sigmas,
    sample,
)
from ctrlpost.diffusion.uncertainty import FourierFeatures, UncertaintyHead

__all__ = [
    "SOLVERS",
    "Denoiser",
    "EDMConfig",
    "FourierFeatures",
    "GivenFrames",
    "LossOutput",
    "NoiseDraws",
    "OdeSolver",
    "Preconditioning",
    "SamplerConfig",
    "UncertaintyHead",
    "apply_text_dropout",
    "condition_mask",
    "condition_network_input",
    "denoised",
    "draw_noise",
    "guided_denoiser",
    "ideal_network_output",
    "integrate",
    "karras_sigmas",
    "latent_from_x0",
    "loss_weight",
    "precondition",
    "sample",
    "sample_augment_sigma",
    "sample_num_condition_frames",
    "sample_sigma",
    "sample_text_keep",
    "training_loss",
    "x0_from_latent",
]
