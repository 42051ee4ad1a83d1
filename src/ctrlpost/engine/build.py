"""Building a training job from a recipe: the one place that reads the whole recipe.

The model is built on the meta device, checkpointed/compiled/sharded from outside, then
materialised on the rank's device and filled from the released checkpoints (strictly): the base
from ``base_model.pt`` (frozen, in the compute dtype), the control branch from ``*_control.pt``
or, when the recipe names none, initialised from the base as the reference does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from ctrlpost.diffusion import EDMConfig, UncertaintyHead
from ctrlpost.engine.parallel import apply_activation_checkpointing, apply_compile, apply_fsdp
from ctrlpost.models import (
    ControlledDiT,
    ControlNet,
    DiT,
    Flavor,
    build_controlled_dit,
    get_flavor,
    load_base_checkpoint,
    load_control_checkpoint,
    with_control_blocks,
)
from ctrlpost.models.tokenizer import VideoTokenizer
from ctrlpost.recipe import Recipe

TEMPORAL_COMPRESSION = 8
SPATIAL_COMPRESSION = 8


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: its rank and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class ModelParts:
    """The networks of a run, materialised on the rank's device."""

    flavor: Flavor
    model: ControlledDiT
    logvar: UncertaintyHead
    compute_dtype: torch.dtype


def flavor_of(recipe: Recipe) -> Flavor:
    """The recipe's flavor with its control-block count."""
    return with_control_blocks(get_flavor(recipe.model.flavor), recipe.model.num_control_blocks)


def latent_frames(num_frames: int) -> int:
    """Latent frames of a causal 8x tokenizer: (121 - 1) / 8 + 1 = 16."""
    return (num_frames - 1) // TEMPORAL_COMPRESSION + 1


def edm_config(recipe: Recipe) -> EDMConfig:
    """The EDM objective's constants, all from ``[diffusion]``."""
    return EDMConfig(**recipe.diffusion.model_dump())


def build_model(recipe: Recipe, runtime: Runtime, *, random_weights: bool = False) -> ModelParts:
    """Build, shard and load the base + control model of ``recipe`` on ``runtime.device``."""
    flavor = flavor_of(recipe)
    bf16 = recipe.model.precision == "bf16"
    compute_dtype = torch.bfloat16 if bf16 else torch.float32
    with torch.device("meta"):
        model = build_controlled_dit(flavor)
    # The frozen base needs no fp32 master copy: store it in the compute dtype.
    model.base.to(compute_dtype)
    model.base.requires_grad_(False)
    # The branch's final layer exists only because the released files hold it: the forward never
    # uses it, so it gets no gradient (AdamW would skip it anyway); keep it out of the optimizer.
    model.control.final_layer.requires_grad_(False)
    apply_activation_checkpointing(model, recipe.parallel.activation_checkpointing)
    if recipe.parallel.compile:
        apply_compile(model)
    apply_fsdp(model.base, param_dtype=None)
    apply_fsdp(model.control, param_dtype=compute_dtype if bf16 else None)
    model.to_empty(device=runtime.device)
    logvar = UncertaintyHead().to(runtime.device)
    if random_weights:
        torch.manual_seed(recipe.job.seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="DTensor random operators")
            model.init_weights()
    else:
        _load_weights(recipe, flavor, model, logvar)
    return ModelParts(flavor=flavor, model=model, logvar=logvar, compute_dtype=compute_dtype)


def _load_weights(recipe: Recipe, flavor: Flavor, model: ControlledDiT,
                  logvar: UncertaintyHead) -> None:
    weights = recipe.weights
    root = Path(weights.dir)
    with torch.device("meta"):
        base_layout_model, control_layout_model = DiT(flavor.base), ControlNet(flavor.control)
    base = load_base_checkpoint(root / weights.base, base_layout_model)
    if weights.control is not None:
        control_state = load_control_checkpoint(root / weights.control, control_layout_model)
    else:
        control_state = _control_from_base(flavor, base.net, seed=recipe.job.seed)
    # set_model_state_dict shards the given tensors in place: read what we need from the base
    # state (the control init above) before handing it over.
    full = StateDictOptions(full_state_dict=True, strict=True)
    set_model_state_dict(model.base, dict(base.net), options=full)  # type: ignore[arg-type]
    set_model_state_dict(model.control, control_state, options=full)  # type: ignore[arg-type]
    logvar.load_state_dict(base.logvar, strict=True)


def _control_from_base(flavor: Flavor, base_state: dict[str, torch.Tensor], *,
                       seed: int) -> dict[str, torch.Tensor]:
    """A fresh control branch (same on every rank and world size: built whole on the CPU from
    ``seed``) with every tensor it shares with the base copied from the base."""
    torch.manual_seed(seed)
    control = ControlNet(flavor.control)
    control.init_weights()
    state = control.state_dict()
    for name, tensor in state.items():
        if name in base_state:
            tensor.copy_(base_state[name])
    return state


def build_tokenizer(recipe: Recipe, runtime: Runtime, compute_dtype: torch.dtype) -> VideoTokenizer:
    """The recipe's video tokenizer, frozen on the rank's device."""
    frames = recipe.data.num_frames
    return VideoTokenizer.from_files(
        Path(recipe.weights.dir) / recipe.weights.tokenizer,
        device=runtime.device,
        dtype=compute_dtype,
        pixel_chunk_frames=frames,
        latent_chunk_frames=latent_frames(frames),
    )


def build_batches(recipe: Recipe, runtime: Runtime, flavor: Flavor,
                  data_state: dict[str, int] | None) -> Any:
    """The rank's endless stream of training batches, from the saved position if any."""
    from ctrlpost.data.dataset import build_dataset
    from ctrlpost.data.loader import build_loader

    data = recipe.data
    dataset = build_dataset(data, recipe.control[0], seed=recipe.job.seed,
                            text_dim=flavor.base.text_dim)
    return build_loader(
        dataset,
        rank=runtime.rank,
        world_size=runtime.world_size,
        seed=recipe.job.seed,
        batch_size=recipe.train.batch_size,
        num_workers=data.num_workers,
        prefetch_factor=data.prefetch_factor,
        max_bad_samples=data.max_bad_samples,
        pin_memory=runtime.device.type == "cuda",
        state=data_state,
    )


def latent_shape(recipe: Recipe, flavor: Flavor) -> tuple[int, int, int, int]:
    """(C, T, H, W) of one clip's latent at the family's 16:9 bucket (synthetic batches)."""
    from ctrlpost.data import buckets

    width, height = buckets.bucket_size(recipe.data.resolution, 16, 9)
    return (flavor.base.latent_channels, latent_frames(recipe.data.num_frames),
            height // SPATIAL_COMPRESSION, width // SPATIAL_COMPRESSION)
