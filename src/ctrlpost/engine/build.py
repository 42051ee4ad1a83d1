"""Composing a job from a recipe: the one place that reads the whole recipe.

:func:`training_plan` is what is known before any rank exists (the run folder, the process
group's backend, what the run records, the resolved recipe handed to ranks); each rank then calls
the plan's ``build`` (:func:`build_job`) for everything its loop needs, as one typed
:class:`TrainingJob`. :func:`fidelity_plan` and :func:`build_fidelity_job` do the same for
`verify --fidelity`. Every other module receives its own typed section or config.

The model is built on the meta device, checkpointed/compiled/sharded from outside, then
materialised on the rank's device and filled from the released checkpoints (strictly): the base
from ``base_model.pt`` (frozen, in the compute dtype), the control branch from ``*_control.pt``
or, when the recipe names none, initialised from the base as the reference does.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from ctrlpost import rundir
from ctrlpost.diffusion import EDMConfig, SamplerConfig, UncertaintyHead
from ctrlpost.engine import memory
from ctrlpost.engine.ema import PowerEMA
from ctrlpost.engine.job import (
    FidelityJob,
    FidelityPlan,
    ModelParts,
    RunRecord,
    TrainingJob,
    TrainingPlan,
)
from ctrlpost.engine.optim import build_optimizer
from ctrlpost.engine.parallel import apply_activation_checkpointing, apply_compile, apply_fsdp
from ctrlpost.engine.runtime import Runtime
from ctrlpost.engine.trainer import LoopConfig
from ctrlpost.modalities import registry
from ctrlpost.models import (
    ControlledDiT,
    ControlNet,
    DiT,
    Flavor,
    build_controlled_dit,
    load_base_checkpoint,
    load_control_checkpoint,
    with_control_blocks,
)
from ctrlpost.models.base_precision import self_attentions
from ctrlpost.models.tokenizer import VideoTokenizer
from ctrlpost.recipe import Recipe, dump_toml
from ctrlpost.tokenizer_geometry import SPATIAL_COMPRESSION, latent_frames

if TYPE_CHECKING:
    from ctrlpost.engine.checkpoint import TrainingState
    from ctrlpost.engine.generate import ClipInputs, GenerationConfig
    from ctrlpost.engine.online_hints import OnlineHints
    from ctrlpost.engine.scoring import Scorer
    from ctrlpost.engine.validation import Validator

log = logging.getLogger("ctrlpost.engine")


def flavor_of(recipe: Recipe) -> Flavor:
    """The recipe's flavor, as the plugin that registers it builds it, with its control-block
    count."""
    architecture = registry.get_flavor(recipe.model.flavor).build()
    return with_control_blocks(architecture, recipe.model.num_control_blocks)


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
    registry.get_base_precision(recipe.model.base_precision).convert(model.base)
    # The branch's final layer exists only because the released files hold it: the forward never
    # uses it, so it gets no gradient (AdamW would skip it anyway); keep it out of the optimizer.
    model.control.final_layer.requires_grad_(False)
    apply_activation_checkpointing(model, checkpointing_plan(recipe, flavor, runtime))
    if recipe.parallel.compile:
        apply_compile(model)
    apply_fsdp(model.base, device=runtime.device, param_dtype=None)
    apply_fsdp(model.control, device=runtime.device, param_dtype=compute_dtype if bf16 else None)
    model.to_empty(device=runtime.device)
    for attention in self_attentions(model.base):  # to_empty left their FP8 state undefined
        attention.reset_fp8_scales()  # type: ignore[operator]
    logvar = UncertaintyHead().to(runtime.device)
    if random_weights:
        _random_weights(recipe, flavor, model, logvar, runtime, compute_dtype)
    else:
        _load_weights(recipe, flavor, model, logvar)
    return ModelParts(flavor=flavor, model=model, logvar=logvar, compute_dtype=compute_dtype)


def checkpointing_plan(recipe: Recipe, flavor: Flavor, runtime: Runtime) -> memory.CheckpointPlan:
    """Each block's activation checkpointing under ``parallel.activation_checkpointing``;
    ``"auto"`` is planned for this rank's GPU (its total memory; off CUDA, the planner's default
    GPU), for the recipe's largest bucket, as `verify` plans it."""
    gpu_memory_gib = memory.DEFAULT_GPU_MEMORY_GIB
    if runtime.device.type == "cuda":
        gpu_memory_gib = torch.cuda.get_device_properties(runtime.device).total_memory / memory.GIB
    dims = memory.model_dims(flavor)
    job = memory.training_job(recipe.data, recipe.train, recipe.model, recipe.parallel,
                              world_size=runtime.world_size)
    plan = memory.block_plan(dims, memory.planned(dims, job, gpu_memory_gib=gpu_memory_gib))
    log.info("activation checkpointing %s for %.1f GiB GPUs: %s",
             recipe.parallel.activation_checkpointing, gpu_memory_gib, plan.describe())
    return plan


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
        compile_encoder=recipe.parallel.compile_tokenizer,
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


def validation_clips(recipe: Recipe, flavor: Flavor, *, root: str | None = None,
                     hints: OnlineHints | None = None) -> list[ClipInputs]:
    """The fixed validation clips: the first ``validation.num_clips`` of ``root`` (default:
    ``validation.root``, else ``data.root``) at the validation frames and resolution, drawn with
    ``validation.seed``; ``hints`` makes their online hints."""
    from ctrlpost.data.dataset import build_dataset
    from ctrlpost.engine.validation import load_clips

    val = recipe.validation
    data = recipe.data.model_copy(update={
        "root": root or val.root or recipe.data.root, "num_frames": validation_frames(recipe),
        "resolution": val.resolution or recipe.data.resolution})
    dataset = build_dataset(data, recipe.control[0], seed=val.seed,
                            text_dim=flavor.base.text_dim)
    clips = load_clips(dataset, val.num_clips)
    if hints is None:
        return clips
    return [dataclasses.replace(clip, hint_C_T_H_W=hints.render(clip.video_3_T_H_W,
                                                                 clip.padding_mask_1_H_W))
            for clip in clips]


def online_hints(recipe: Recipe, runtime: Runtime) -> OnlineHints | None:
    """The models of the control's online hint loaded on the rank's device, or None when its
    hints come from files or frames in the loader."""
    from ctrlpost.engine.online_hints import OnlineHints

    control = recipe.control[0]
    modality = registry.get_modality(control.modality)
    params = registry.validate_params(modality, control.params)
    hint = modality.online_hint_for(params)
    if hint is None:
        return None
    return OnlineHints(hint, params, weights_dir=recipe.weights.dir, device=runtime.device)


def scorer(recipe: Recipe) -> Scorer:
    """The recipe's modality and params, ready to score generated clips."""
    from ctrlpost.engine.scoring import Scorer
    from ctrlpost.modalities import registry

    control = recipe.control[0]
    modality = registry.get_modality(control.modality)
    return Scorer(modality, registry.validate_params(modality, control.params))


def build_validator(recipe: Recipe, runtime: Runtime, parts: ModelParts, ema: PowerEMA,
                    tokenizer: VideoTokenizer,
                    hints: OnlineHints | None = None) -> Validator | None:
    """The run's validator, or None when ``validation.every_steps`` is 0."""
    from ctrlpost.engine.validation import ValidationConfig, Validator

    val = recipe.validation
    if val.every_steps == 0:
        return None
    cfg = ValidationConfig(every_steps=val.every_steps, at_start=val.at_start,
                           strip_frames=val.strip_frames,
                           out_dir=rundir.RunDir(recipe.run_dir()).validation)
    return Validator(cfg=cfg, generation=generation_config(recipe), model=parts.model, ema=ema,
                     tokenizer=validation_tokenizer(tokenizer, validation_frames(recipe)),
                     clips=validation_clips(recipe, parts.flavor, hints=hints),
                     scorer=scorer(recipe),
                     device=runtime.device, dtype=parts.compute_dtype)


def loop_config(recipe: Recipe) -> LoopConfig:
    """The loop's knobs, from ``[train]``, ``[optim]``, ``[checkpoint]`` and ``[logging]``."""
    return LoopConfig(
        steps=recipe.train.steps, grad_accum_steps=recipe.train.grad_accum_steps,
        lr=recipe.optim.lr, warmup_steps=recipe.optim.warmup_steps,
        warmup_start_factor=recipe.optim.warmup_start_factor,
        grad_clip_norm=recipe.optim.grad_clip_norm,
        max_nonfinite_steps=recipe.train.max_nonfinite_steps,
        save_every_steps=recipe.checkpoint.every_steps, keep_last=recipe.checkpoint.keep_last,
        export_released=recipe.checkpoint.export_released,
        log_every_steps=recipe.logging.every_steps, seed=recipe.job.seed,
        control_weight=recipe.control[0].weight,
    )


def training_plan(recipe: Recipe, *, recipe_name: str, synthetic: bool = False) -> TrainingPlan:
    """``recipe``'s training job before any rank exists. ``recipe_name`` is the file the user
    gave (each export records it); ``synthetic`` trains on random weights and random latents
    of the recipe's geometry (benchmarks: no files needed)."""
    return TrainingPlan(
        name=recipe.job.name, backend=recipe.parallel.backend, run_dir=recipe.run_dir(),
        record=RunRecord(recipe_name=recipe_name, recipe_toml=dump_toml(recipe),
                         ema_s=recipe.train.ema_s, flavor=recipe.model.flavor),
        synthetic=synthetic, resolved_recipe=recipe.model_dump_json(indent=2),
        build=functools.partial(build_job, recipe, synthetic=synthetic))


def build_job(recipe: Recipe, runtime: Runtime, *, synthetic: bool = False) -> TrainingJob:
    """Everything one rank's loop needs, on ``runtime.device``: the sharded model, its
    optimizer and EMA, the tokenizer and validator, the batches (built once the position to
    resume from is known), and the loop's and the objective's configs."""
    parts = build_model(recipe, runtime, random_weights=synthetic)
    optim = recipe.optim
    optimizer = build_optimizer(parts.model.control.parameters(), lr=optim.lr, betas=optim.betas,
                                weight_decay=optim.weight_decay, eps=optim.eps,
                                fused=optim.fused, device=runtime.device)
    ema = PowerEMA(parts.model.control.named_parameters(), s=recipe.train.ema_s)
    tokenizer, validator = None, None
    if synthetic:
        batches = functools.partial(_synthetic_batches, recipe, runtime, parts)
    else:
        tokenizer = build_tokenizer(recipe, runtime, parts.compute_dtype)
        hints = online_hints(recipe, runtime)
        validator = build_validator(recipe, runtime, parts, ema, tokenizer, hints)
        batches = functools.partial(_loader_batches, recipe, runtime, parts.flavor, hints)
    return TrainingJob(parts=parts, optimizer=optimizer, ema=ema, tokenizer=tokenizer,
                       validator=validator, batches=batches, loop=loop_config(recipe),
                       edm=edm_config(recipe), checkpoint=recipe.checkpoint,
                       logging=recipe.logging,
                       validation_note="" if validator is None else _validation_note(recipe))


def _loader_batches(recipe: Recipe, runtime: Runtime, flavor: Flavor,
                    hints: OnlineHints | None, state: TrainingState) -> Any:
    batches = build_batches(recipe, runtime, flavor, state.data)
    if hints is None:
        return batches
    from ctrlpost.engine.online_hints import FilledBatches

    return FilledBatches(batches, hints)


def _synthetic_batches(recipe: Recipe, runtime: Runtime, parts: ModelParts,
                       state: TrainingState) -> Iterator[dict[str, Any]]:
    """Random latents of the recipe's geometry, drawn from where ``state`` resumes."""
    from ctrlpost.engine.synthetic import SyntheticLatents

    channels, frames, height, width = latent_shape(recipe, parts.flavor)
    batch = recipe.train.batch_size
    return SyntheticLatents(
        latent_B_C_T_H_W=(batch, channels, frames, height, width),
        text_B_L_D=(batch, parts.flavor.base.text_tokens, parts.flavor.base.text_dim),
        spatial_compression=SPATIAL_COMPRESSION, sigma_data=recipe.diffusion.sigma_data,
        seed=recipe.job.seed, grad_accum_steps=recipe.train.grad_accum_steps,
        rank=runtime.rank, world_size=runtime.world_size, device=runtime.device,
        dtype=parts.compute_dtype, start_step=state.step)


def _validation_note(recipe: Recipe) -> str:
    val = recipe.validation
    return (f"validation every {val.every_steps} steps on {val.num_clips} clip(s) "
            f"({val.sampler} {val.steps} steps, guidance {val.guidance:g})")


def fidelity_plan(recipe: Recipe, *, clips_root: str | None = None) -> FidelityPlan:
    """`verify --fidelity` of ``recipe`` before the model is built: clips from ``clips_root``,
    else ``validation.root``, else ``data.root``; strips under the run folder."""
    val = recipe.validation
    settings = {"sampler": val.sampler, "steps": val.steps, "guidance": val.guidance,
                "condition_frames": val.condition_frames, "seed": val.seed,
                "num_frames": validation_frames(recipe),
                "resolution": val.resolution or recipe.data.resolution}
    return FidelityPlan(backend=recipe.parallel.backend, weights=recipe.weights,
                        clips_root=clips_root, out_dir=rundir.RunDir(recipe.run_dir()).fidelity,
                        settings=settings,
                        build=functools.partial(build_fidelity_job, recipe, clips_root=clips_root))


def build_fidelity_job(recipe: Recipe, runtime: Runtime, *,
                       clips_root: str | None = None) -> FidelityJob:
    """The base model with a blank branch (each checkpoint scored is loaded into it), the
    validation tokenizer and clips, the modality's scorer, and how clips are generated."""
    without_control = recipe.model_copy(update={
        "weights": recipe.weights.model_copy(update={"control": None})})
    parts = build_model(without_control, runtime)
    tokenizer = validation_tokenizer(build_tokenizer(recipe, runtime, parts.compute_dtype),
                                     validation_frames(recipe))
    clips = validation_clips(recipe, parts.flavor, root=clips_root,
                             hints=online_hints(recipe, runtime))
    return FidelityJob(parts=parts, tokenizer=tokenizer, clips=clips, scorer=scorer(recipe),
                       generation=generation_config(recipe),
                       strip_frames=recipe.validation.strip_frames, seed=recipe.validation.seed)
