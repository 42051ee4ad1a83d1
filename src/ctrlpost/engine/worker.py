"""The per-rank entry point: process group, build, resume, train, export.

Run in-process for one process, by ``elastic_launch`` for several, or directly under torchrun /
SLURM. Every rank writes its log to ``<run>/logs/rank{R}.log``; a failure's traceback lands there
and the launcher reports one line naming that file.
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib.metadata
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ctrlpost import rundir
from ctrlpost.engine import checkpoint
from ctrlpost.engine.checkpoint import TrainingState
from ctrlpost.engine.job import TrainingJob, TrainingPlan
from ctrlpost.engine.metrics import (
    Console,
    RunLogger,
    console_from_environment,
    plain_console,
    truncate_metrics,
)
from ctrlpost.engine.runtime import Runtime, init_distributed, under_launcher
from ctrlpost.engine.trainer import Trainer
from ctrlpost.errors import Stopped
from ctrlpost.files import write_text_atomic
from ctrlpost.processes import die_with_parent, exit_without_teardown, launcher_from_environment
from ctrlpost.rundir import RunDir

log = logging.getLogger("ctrlpost.engine")
#: Libraries whose versions decide a run's numbers, besides ctrlpost and its plugins.
PACKAGES = ("torch", "transformers", "numpy", "opencv-python-headless", "pydantic")


def main(plan: TrainingPlan, *, console: Console | None = None) -> None:
    """Entry point of one rank: join the process group, build ``plan``, resume, train.

    ``console`` shows rank 0's progress (the command's view when this rank runs inside
    `ctrlpost train`); by default, protocol lines for our launcher or plain lines.
    """
    if "TORCHELASTIC_RUN_ID" in os.environ and launcher_from_environment() is None:
        # Started by torchrun: go down with it, even when it is SIGKILLed. (Ranks of our own
        # launcher armed a stronger guard before importing anything; the in-process single
        # rank's parent is the user's shell.)
        die_with_parent()
    finished = exit_without_teardown() if under_launcher() else None
    runtime = init_distributed(plan.backend)
    log_path = _setup_logging(plan.run_dir, runtime.rank)
    with crash_traces(log_path, until_exit=under_launcher()):
        try:
            train(plan, runtime, console=console or console_from_environment())
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


def train(plan: TrainingPlan, runtime: Runtime, *,
          console: Console = plain_console) -> TrainingState:
    """Build the job of ``plan`` on this rank, resume if asked, and run the loop."""
    run_dir = plan.run_dir
    checkpoints = RunDir(run_dir).checkpoints
    if runtime.is_main:
        checkpoints.mkdir(parents=True, exist_ok=True)
        for path in checkpoint.remove_leftovers(run_dir, checkpoints):
            log.info("removed %s, left by a run killed while writing it", path)
        write_run_files(run_dir, plan.record.recipe_toml)
    dist.barrier()
    job = plan.build(runtime)
    parts = job.parts

    def sidecar() -> dict[str, Any]:
        return plan.record.sidecar(package_versions())

    restored = checkpoint.restore(
        checkpoints, job.checkpoint.resume, control=parts.model.control,
        optimizer=job.optimizer, ema=job.ema,
        sidecar=sidecar() if job.checkpoint.export_released else None)
    state, resume_from = restored.state, restored.path
    if runtime.is_main:
        # A fresh start keeps nothing, not even a step-0 validation of an earlier attempt.
        truncate_metrics(run_dir, after_step=state.step if resume_from is not None else -1)
    logger = RunLogger(run_dir, enabled=runtime.is_main, total_steps=job.loop.steps,
                       every_steps=job.logging.every_steps, jsonl=job.logging.jsonl,
                       tensorboard=job.logging.tensorboard, device=runtime.device,
                       console=console)
    for note in restored.notes:
        log.warning(note)
        logger.note(note)
    logger.note(_start_line(plan, job, runtime, state, resume_from))
    logger.begin(state.step)
    trainer = Trainer(
        cfg=job.loop, edm=job.edm, model=parts.model, logvar=parts.logvar,
        tokenizer=job.tokenizer, optimizer=job.optimizer, ema=job.ema,
        batches=job.batches(state), state=state, device=runtime.device,
        compute_dtype=parts.compute_dtype, checkpoints=checkpoints, sidecar=sidecar,
        on_metrics=logger, validator=job.validator, on_validation=logger.validation,
        on_saved=logger.saved,
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


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers: ctrlpost, every distribution that
    registered a modality, data source or flavor, and ``PACKAGES``."""
    from ctrlpost.modalities import registry

    versions = {"python": sys.version.split()[0]}
    for name in dict.fromkeys(["ctrlpost", *registry.plugin_distributions(), *PACKAGES]):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def write_run_files(run_dir: Path, recipe_toml: str) -> None:
    """``recipe.toml`` (the recipe of the latest start) and ``versions.json``; a start whose
    recipe differs from the one before it (a resume with other values) is also kept, so no
    start's recipe is lost: ``recipes/start_NNN.toml``."""
    import json

    paths = RunDir(run_dir)
    history = run_dir / rundir.RECIPE_HISTORY
    kept = sorted(history.glob("start_*.toml")) if history.is_dir() else []
    if not kept or kept[-1].read_text(encoding="utf-8") != recipe_toml:
        history.mkdir(exist_ok=True)
        write_text_atomic(history / f"start_{len(kept) + 1:03d}.toml", recipe_toml)
    write_text_atomic(paths.recipe, recipe_toml)
    write_text_atomic(paths.versions, json.dumps(package_versions(), indent=2) + "\n")


def _start_line(plan: TrainingPlan, job: TrainingJob, runtime: Runtime, state: TrainingState,
                resume_from: Path | None) -> str:
    where = f"resumed from {resume_from} at step {state.step}" if resume_from else "fresh start"
    validation = f"; {job.validation_note}" if job.validation_note else ""
    return (f"training {plan.name}: flavor {plan.record.flavor}, {runtime.world_size} "
            f"rank(s) on {runtime.device.type}, {job.loop.steps} steps; {where}{validation}")


def _setup_logging(run_dir: Path, rank: int) -> Path:
    path = RunDir(run_dir).rank_log(rank)
    path.parent.mkdir(parents=True, exist_ok=True)
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
