"""Building a training job from a recipe: the one place that reads the whole recipe.

The model is built on the meta device, checkpointed/compiled/sharded from outside, then
materialised on the rank's device and filled from the released checkpoints (strictly): the base
from ``base_model.pt`` (frozen, in the compute dtype), the control branch from ``*_control.pt``
or, when the recipe names none, initialised from the base as the reference does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from ctrlpost.diffusion import EDMConfig, SamplerConfig, UncertaintyHead
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

if TYPE_CHECKING:
    from ctrlpost.engine.ema import PowerEMA
    from ctrlpost.engine.generate import ClipInputs, GenerationConfig
    from ctrlpost.engine.scoring import Scorer
    from ctrlpost.engine.validation import Validator

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
        _random_weights(recipe, flavor, model, logvar, runtime, compute_dtype)
    else:
        _load_weights(recipe, flavor, model, logvar)
    return ModelParts(flavor=flavor, model=model, logvar=logvar, compute_dtype=compute_dtype)


def _random_weights(recipe: Recipe, flavor: Flavor, model: ControlledDiT,
                    logvar: UncertaintyHead, runtime: Runtime, compute_dtype: torch.dtype) -> None:
    """Random weights (benchmarks), the same on every rank and world size: the whole model is
    initialised on rank 0 from ``job.seed`` (on its own device, not the CPU), then broadcast
    into the shards. Initialising the shards in place would draw per-rank numbers, so a run
    resumed on another world size would meet another base."""
    base_state: dict[str, torch.Tensor] = {}
    control_state: dict[str, torch.Tensor] = {}
    if runtime.rank == 0:
        torch.manual_seed(recipe.job.seed)
        with torch.device(runtime.device):
            whole = build_controlled_dit(flavor)
        whole.init_weights()
        whole.base.to(compute_dtype)
        base_state, control_state = whole.base.state_dict(), whole.control.state_dict()
        del whole
    options = StateDictOptions(full_state_dict=True, strict=True, broadcast_from_rank0=True)
    set_model_state_dict(model.base, base_state, options=options)  # type: ignore[arg-type]
    set_model_state_dict(model.control, control_state, options=options)  # type: ignore[arg-type]
    del base_state, control_state
    if runtime.device.type == "cuda":
        torch.cuda.empty_cache()  # the whole copy is gone: give its blocks back before training
    torch.manual_seed(recipe.job.seed)  # the small logvar head: drawn alike on every rank
    logvar.load_state_dict(UncertaintyHead().state_dict())


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


def validation_frames(recipe: Recipe) -> int:
    """Frames per validation clip (``validation.num_frames``, else ``data.num_frames``)."""
    return recipe.validation.num_frames or recipe.data.num_frames


def sampler_config(recipe: Recipe) -> SamplerConfig:
    """The validation sampler: ``[validation]`` solver and guidance over the recipe's σ range."""
    val = recipe.validation
    return SamplerConfig(method=val.sampler, steps=val.steps, guidance=val.guidance,
                         sigma_min=recipe.diffusion.sigma_min,
                         sigma_max=recipe.diffusion.sigma_max)


def generation_config(recipe: Recipe) -> GenerationConfig:
    """How validation (and ``verify --fidelity``) generates clips."""
    from ctrlpost.engine.generate import GenerationConfig

    val = recipe.validation
    return GenerationConfig(edm=edm_config(recipe), sampler=sampler_config(recipe),
                            condition_frames=val.condition_frames, seed=val.seed,
                            control_weight=recipe.control[0].weight)


def validation_tokenizer(tokenizer: VideoTokenizer, num_frames: int) -> VideoTokenizer:
    """``tokenizer`` working on chunks of ``num_frames`` pixel frames (same JIT modules; the
    per-frame statistics are the first columns of the training ones)."""
    latent = latent_frames(num_frames)
    if tokenizer.pixel_chunk_frames == num_frames:
        return tokenizer
    return VideoTokenizer(
        encoder=tokenizer.encoder, decoder=tokenizer.decoder,
        mean_B_C_T_1_1=tokenizer.mean_B_C_T_1_1[:, :, :latent],
        std_B_C_T_1_1=tokenizer.std_B_C_T_1_1[:, :, :latent], device=tokenizer.device,
        dtype=tokenizer.dtype, pixel_chunk_frames=num_frames, latent_chunk_frames=latent,
        spatial_compression=tokenizer.spatial_compression_factor,
        max_encode_batch=tokenizer.max_encode_batch, max_decode_batch=tokenizer.max_decode_batch)


def validation_clips(recipe: Recipe, flavor: Flavor, *,
                     root: str | None = None) -> list[ClipInputs]:
    """The fixed validation clips: the first ``validation.num_clips`` of ``root`` (default:
    ``validation.root``, else ``data.root``) at the validation frames and resolution, drawn with
    ``validation.seed``."""
    from ctrlpost.data.dataset import build_dataset
    from ctrlpost.engine.validation import load_clips

    val = recipe.validation
    data = recipe.data.model_copy(update={
        "root": root or val.root or recipe.data.root, "num_frames": validation_frames(recipe),
        "resolution": val.resolution or recipe.data.resolution})
    dataset = build_dataset(data, recipe.control[0], seed=val.seed,
                            text_dim=flavor.base.text_dim)
    return load_clips(dataset, val.num_clips)


def scorer(recipe: Recipe) -> Scorer:
    """The recipe's modality and params, ready to score generated clips."""
    from ctrlpost.engine.scoring import Scorer
    from ctrlpost.modalities import registry

    control = recipe.control[0]
    modality = registry.get_modality(control.modality)
    return Scorer(modality, registry.validate_params(modality, control.params))


def build_validator(recipe: Recipe, runtime: Runtime, parts: ModelParts, ema: PowerEMA,
                    tokenizer: VideoTokenizer) -> Validator | None:
    """The run's validator, or None when ``validation.every_steps`` is 0."""
    from ctrlpost.engine.validation import VALIDATION_DIR, ValidationConfig, Validator

    val = recipe.validation
    if val.every_steps == 0:
        return None
    cfg = ValidationConfig(every_steps=val.every_steps, at_start=val.at_start,
                           strip_frames=val.strip_frames,
                           out_dir=recipe.run_dir() / VALIDATION_DIR)
    return Validator(cfg=cfg, generation=generation_config(recipe), model=parts.model, ema=ema,
                     tokenizer=validation_tokenizer(tokenizer, validation_frames(recipe)),
                     clips=validation_clips(recipe, parts.flavor), scorer=scorer(recipe),
                     device=runtime.device, dtype=parts.compute_dtype)
