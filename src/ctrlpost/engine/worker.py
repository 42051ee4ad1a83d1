"""The per-rank entry point: process group, build, resume, train, export.

Run in-process for one process, by ``elastic_launch`` for several, or directly under torchrun /
SLURM. Every rank writes its log to ``<run>/logs/rank{R}.log``; a failure's traceback lands there
and the launcher reports one line naming that file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import faulthandler
import importlib.metadata
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ctrlpost.diffusion import x0_from_latent
from ctrlpost.engine import build, checkpoint
from ctrlpost.engine.checkpoint import TrainingState
from ctrlpost.engine.ema import PowerEMA
from ctrlpost.engine.launch import under_launcher
from ctrlpost.engine.metrics import RunLogger, truncate_metrics
from ctrlpost.engine.optim import build_optimizer
from ctrlpost.engine.seeding import seeded_generator
from ctrlpost.engine.trainer import LoopConfig, Trainer
from ctrlpost.errors import Stopped
from ctrlpost.processes import die_with_parent, exit_without_teardown, launcher_from_environment
from ctrlpost.recipe import Recipe, dump_toml, load

log = logging.getLogger("ctrlpost.engine")
_SYNTHETIC_STREAM = 0x5EED  # keeps synthetic clips apart from the trainer's noise draws
PACKAGES = ("ctrlpost", "ctrlpost-edge", "ctrlpost-blur", "torch", "transformers", "numpy",
            "opencv-python-headless", "pydantic")


@dataclass(frozen=True)
class WorkerOptions:
    """What the command line adds to the recipe."""

    synthetic: bool = False  # random weights and random latents: no files needed (benchmarks)


def main(recipe_path: str, overrides: list[str], options: WorkerOptions) -> None:
    """Entry point of one rank (picklable: used by ``elastic_launch``)."""
    if "TORCHELASTIC_RUN_ID" in os.environ and launcher_from_environment() is None:
        # Started by torchrun: go down with it, even when it is SIGKILLed. (Ranks of our own
        # launcher armed a stronger guard before importing anything; the in-process single
        # rank's parent is the user's shell.)
        die_with_parent()
    finished = exit_without_teardown() if under_launcher() else None
    recipe = load(recipe_path, overrides)
    runtime = init_distributed(recipe.parallel.backend)
    run_dir = recipe.run_dir()
    log_path = _setup_logging(run_dir, runtime.rank)
    with crash_traces(log_path, until_exit=under_launcher()):
        try:
            train(recipe, runtime, options, recipe_path=recipe_path)
        except Stopped as stopped:
            log.info("rank %d: %s", runtime.rank, stopped.message)
            if not under_launcher():
                raise  # the in-process rank is the command: it reports the stop
        except BaseException as exc:
            log.error("rank %d failed:\n%s", runtime.rank, traceback.format_exc())
            _mark_failure(log_path)
            if under_launcher() and not isinstance(exc, SystemExit):
                # The traceback is in the rank's log, which the launcher's one line names;
                # printed again it would flood the console through the launcher's tee.
                raise SystemExit(1) from None
            raise
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    if finished is not None:
        finished()


def init_distributed(backend: str) -> build.Runtime:
    """Join the job's process group (env:// under a launcher, else a one-process group)."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available() and backend != "gloo"
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    chosen = "nccl" if cuda else "gloo"
    timeout = dt.timedelta(minutes=30)
    if "MASTER_ADDR" in os.environ:
        dist.init_process_group(chosen, rank=rank, world_size=world, timeout=timeout,
                                device_id=device if cuda else None)
    else:
        dist.init_process_group(chosen, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=timeout)
    return build.Runtime(rank=rank, world_size=world, local_rank=local_rank, device=device)


def train(recipe: Recipe, runtime: build.Runtime, options: WorkerOptions, *,
          recipe_path: str) -> TrainingState:
    """Build everything from the recipe, resume if asked, and run the loop."""
    run_dir = recipe.run_dir()
    checkpoints = run_dir / "checkpoints"
    if runtime.is_main:
        checkpoints.mkdir(parents=True, exist_ok=True)
        for path in checkpoint.remove_leftovers(run_dir, checkpoints):
            log.info("removed %s, left by a run killed while writing it", path)
        _write_run_files(run_dir, recipe)
    dist.barrier()
    parts = build.build_model(recipe, runtime, random_weights=options.synthetic)
    optim = recipe.optim
    optimizer = build_optimizer(parts.model.control.parameters(), lr=optim.lr, betas=optim.betas,
                                weight_decay=optim.weight_decay, eps=optim.eps,
                                fused=optim.fused, device=runtime.device)
    ema = PowerEMA(parts.model.control.named_parameters(), s=recipe.train.ema_s)
    restored = checkpoint.restore(
        checkpoints, recipe.checkpoint.resume, control=parts.model.control, optimizer=optimizer,
        ema=ema, sidecar=_sidecar(recipe, recipe_path) if recipe.checkpoint.export_released
        else None)
    state, resume_from = restored.state, restored.path
    if runtime.is_main:
        # A fresh start keeps nothing, not even a step-0 validation of an earlier attempt.
        truncate_metrics(run_dir, after_step=state.step if resume_from is not None else -1)
    logger = RunLogger(run_dir, enabled=runtime.is_main, total_steps=recipe.train.steps,
                       every_steps=recipe.logging.every_steps, jsonl=recipe.logging.jsonl,
                       tensorboard=recipe.logging.tensorboard, device=runtime.device)
    for note in restored.notes:
        log.warning(note)
        logger.note(note)
    logger.note(_start_line(recipe, runtime, state, resume_from,
                            validating=not options.synthetic))
    validator = None
    if options.synthetic:
        tokenizer = None
        batches: Any = SyntheticLatents(recipe, parts, runtime, start_step=state.step)
    else:
        tokenizer = build.build_tokenizer(recipe, runtime, parts.compute_dtype)
        batches = build.build_batches(recipe, runtime, parts.flavor, state.data)
        validator = build.build_validator(recipe, runtime, parts, ema, tokenizer)
    trainer = Trainer(
        cfg=loop_config(recipe), edm=build.edm_config(recipe), model=parts.model,
        logvar=parts.logvar, tokenizer=tokenizer, optimizer=optimizer, ema=ema, batches=batches,
        state=state, device=runtime.device, compute_dtype=parts.compute_dtype,
        checkpoints=checkpoints, sidecar=lambda: _sidecar(recipe, recipe_path),
        on_metrics=logger, validator=validator, on_validation=logger.validation,
    )
    try:
        final = trainer.run()
    finally:
        logger.close()
    if trainer.stop.signum is not None:
        raise Stopped(stopped_line(final.step), signum=trainer.stop.signum)
    logger.note(f"done: step {final.step}, checkpoints in {checkpoints}")
    return final


def stopped_line(step: int | None) -> str:
    """What `ctrlpost train` says when a signal stopped it after saving."""
    if step is None:
        return "stopped before the first checkpoint; run the same command to start again"
    return f"stopped at step {step}, checkpoint saved; run the same command to resume"


def loop_config(recipe: Recipe) -> LoopConfig:
    """The loop's knobs from the recipe."""
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


class SyntheticLatents:
    """Endless random latent batches of the recipe's geometry (benchmarks: no data, no
    tokenizer).

    Micro-batch ``k`` of optimizer step ``s`` on rank ``r`` of ``W`` is drawn from a generator
    seeded with ``(seed, s, k·W + r)`` on a stream of its own, like the trainer's noise: a
    resumed run draws what the uninterrupted one drew, and the same global batch on another
    world size (with ``grad_accum_steps`` making up the difference) holds the same clips.
    """

    def __init__(self, recipe: Recipe, parts: build.ModelParts, runtime: build.Runtime, *,
                 start_step: int) -> None:
        channels, frames, height, width = build.latent_shape(recipe, parts.flavor)
        self.shape = (recipe.train.batch_size, channels, frames, height, width)
        self.text_shape = (recipe.train.batch_size, parts.flavor.base.text_tokens,
                           parts.flavor.base.text_dim)
        self.device, self.dtype = runtime.device, parts.compute_dtype
        self.sigma_data = recipe.diffusion.sigma_data
        self.seed, self.accum = recipe.job.seed, recipe.train.grad_accum_steps
        self.rank, self.world = runtime.rank, runtime.world_size
        self.start_step, self.drawn = start_step, 0

    def __iter__(self) -> SyntheticLatents:
        return self

    def __next__(self) -> dict[str, Any]:
        step, micro = divmod(self.drawn, self.accum)
        self.drawn += 1
        generator = seeded_generator(
            [self.seed, self.start_step + step, micro * self.world + self.rank], self.device,
            stream=_SYNTHETIC_STREAM)

        def normal(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.randn(shape, generator=generator, device=self.device)

        B, _, _, H, W = self.shape
        pixels = (B, 1, H * build.SPATIAL_COMPRESSION, W * build.SPATIAL_COMPRESSION)
        return {
            "x0": x0_from_latent(normal(self.shape), sigma_data=self.sigma_data).to(self.dtype),
            "hint": x0_from_latent(normal(self.shape), sigma_data=self.sigma_data).to(self.dtype),
            "t5": normal(self.text_shape).to(self.dtype),
            "padding_mask": torch.zeros(pixels, device=self.device, dtype=self.dtype),
            "fps": torch.full((B,), 24.0, device=self.device),
        }


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers."""
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _sidecar(recipe: Recipe, recipe_path: str) -> dict[str, Any]:
    return {"recipe_name": Path(recipe_path).name, "recipe": dump_toml(recipe),
            "versions": package_versions(), "ema_s": recipe.train.ema_s,
            "flavor": recipe.model.flavor}


def _write_run_files(run_dir: Path, recipe: Recipe) -> None:
    import json

    for name, text in (("recipe.toml", dump_toml(recipe)),
                       ("versions.json", json.dumps(package_versions(), indent=2) + "\n")):
        temp = run_dir / f".{name}.tmp"
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, run_dir / name)


def _start_line(recipe: Recipe, runtime: build.Runtime, state: TrainingState,
                resume_from: Path | None, *, validating: bool) -> str:
    where = f"resumed from {resume_from} at step {state.step}" if resume_from else "fresh start"
    val = recipe.validation
    validation = (f"; validation every {val.every_steps} steps on {val.num_clips} clip(s) "
                  f"({val.sampler} {val.steps} steps, guidance {val.guidance:g})"
                  if val.every_steps and validating else "")
    return (f"training {recipe.job.name}: flavor {recipe.model.flavor}, {runtime.world_size} "
            f"rank(s) on {runtime.device.type}, {recipe.train.steps} steps; {where}{validation}")


def _setup_logging(run_dir: Path, rank: int) -> Path:
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"rank{rank}.log"
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("ctrlpost")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return path


@contextlib.contextmanager
def crash_traces(log_path: Path, *, until_exit: bool) -> Iterator[None]:
    """On a native crash (a segfault or abort inside a library), write every thread's Python
    stack into the rank's log, which would otherwise stay empty.

    A process that is only a rank keeps this until it exits (``until_exit``), so a crash while
    tearing down is caught as well; the in-process rank of `ctrlpost train` gives the handler
    back to stderr when it returns.
    """
    stream = log_path.open("a", encoding="utf-8")
    was_enabled = faulthandler.is_enabled()
    faulthandler.enable(file=stream, all_threads=True)
    try:
        yield
    finally:
        if not until_exit:
            faulthandler.disable()
            stream.close()
            if was_enabled:
                faulthandler.enable()


def _mark_failure(log_path: Path) -> None:
    """Flush the rank's log so the launcher can point at a complete traceback."""
    for handler in logging.getLogger("ctrlpost").handlers:
        handler.flush()
