"""Training checkpoints (torch.distributed.checkpoint) and exports in the released layout.

A training checkpoint is the folder ``<run>/checkpoints/step_{N:09}/``: DCP shards of the
control weights, optimizer, EMA and the trainer state (step, counters, data position). It is
written under ``.step_{N:09}.tmp`` and committed by a rename after ``meta.json`` is in it, so a
run killed at any moment leaves either a complete checkpoint or a temp folder that resume
ignores. DCP reshards on load, so any world size resumes any checkpoint. The frozen base is never
saved: it is re-read from the released file.

Each save also exports ``iter_{N:09}_reg_model.pt`` and ``iter_{N:09}_ema_model.pt`` (flat
``net.*`` tensors, like ``edge_control.pt``) with a sidecar ``iter_{N:09}.json`` (iteration,
recipe, package versions) beside them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from ctrlpost.engine.ema import PowerEMA
from ctrlpost.errors import LaunchError
from ctrlpost.models.state_dict import save_checkpoint, to_control_layout

_STEP_DIR = re.compile(r"^step_(\d{9})$")
META = "meta.json"


def step_dir(checkpoints: Path, step: int) -> Path:
    """The folder of the committed checkpoint after ``step`` optimizer steps."""
    return checkpoints / f"step_{step:09d}"


def complete_checkpoints(checkpoints: Path) -> list[tuple[int, Path]]:
    """Committed checkpoints, oldest first (folders with ``meta.json``; temp folders ignored)."""
    if not checkpoints.is_dir():
        return []
    found = []
    for path in checkpoints.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / META).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_resume(checkpoints: Path, resume: str) -> Path | None:
    """The checkpoint to resume from: ``auto`` = latest complete, ``never``, or a path."""
    if resume == "never":
        return None
    if resume == "auto":
        found = complete_checkpoints(checkpoints)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / META).is_file():
        raise LaunchError(f"checkpoint.resume: {path} is not a complete checkpoint folder",
                          hint=f"pick a step_* folder under {checkpoints}, or 'auto'")
    return path


@dataclass
class TrainingState:
    """What a training checkpoint holds besides tensors: the loop's position and counters."""

    step: int = 0
    nonfinite_steps: int = 0
    bad_samples: int = 0
    data: dict[str, int] = field(default_factory=lambda: {"epoch": 0, "consumed": 0})

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "nonfinite_steps": self.nonfinite_steps,
                "bad_samples": self.bad_samples, "data": dict(self.data)}


def _state(control: nn.Module, optimizer: torch.optim.Optimizer, ema: PowerEMA,
           trainer: TrainingState) -> dict[str, Any]:
    return {
        "control": get_model_state_dict(control),
        "optim": get_optimizer_state_dict(control, optimizer),
        "ema": ema.state_dict(),
        "trainer": trainer.to_dict(),
    }


def save(checkpoints: Path, *, control: nn.Module, optimizer: torch.optim.Optimizer,
         ema: PowerEMA, trainer: TrainingState, meta: Mapping[str, Any]) -> Path:
    """Write and commit the training checkpoint of ``trainer.step`` (collective)."""
    final = step_dir(checkpoints, trainer.step)
    temp = checkpoints / f".{final.name}.tmp"
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
    dist.barrier()
    dcp.save(_state(control, optimizer, ema, trainer), checkpoint_id=str(temp))
    dist.barrier()
    if rank == 0:
        record = {**meta, "step": trainer.step, "world_size": dist.get_world_size(),
                  "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _write_json(temp / META, record)
        if final.exists():  # a re-run of the same step after a crash: replace it whole
            shutil.rmtree(final)
        os.replace(temp, final)
        _fsync_dir(checkpoints)
    dist.barrier()
    return final


def load(path: Path, *, control: nn.Module, optimizer: torch.optim.Optimizer,
         ema: PowerEMA) -> TrainingState:
    """Restore control weights, optimizer, EMA and trainer state from a committed checkpoint."""
    state = _state(control, optimizer, ema, TrainingState())
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(control, state["control"])
    set_optimizer_state_dict(control, optimizer, state["optim"])
    ema.load_state_dict(state["ema"])
    saved = state["trainer"]
    return TrainingState(step=int(saved["step"]), nonfinite_steps=int(saved["nonfinite_steps"]),
                         bad_samples=int(saved["bad_samples"]),
                         data={k: int(v) for k, v in saved["data"].items()})


def export_released(checkpoints: Path, *, step: int, control: nn.Module, ema: PowerEMA,
                    sidecar: Mapping[str, Any]) -> list[Path]:
    """Write ``iter_{N}_reg_model.pt``, ``iter_{N}_ema_model.pt`` and ``iter_{N}.json`` (rank 0).

    Collective: every rank takes part in gathering the full tensors.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    regular: dict[str, torch.Tensor] = get_model_state_dict(control, options=options)  # type: ignore[assignment]
    averages = {name: _full_cpu(t) for name, t in ema.state_dict().items()}
    if dist.get_rank() != 0:
        return []
    stem = checkpoints / f"iter_{step:09d}"
    reg_path = save_checkpoint(to_control_layout(regular), f"{stem}_reg_model.pt")
    ema_path = save_checkpoint(to_control_layout({**regular, **averages}), f"{stem}_ema_model.pt")
    _write_json(Path(f"{stem}.json"), {**sidecar, "iteration": step,
                                         "files": [reg_path.name, ema_path.name]})
    return [reg_path, ema_path, Path(f"{stem}.json")]


def prune(checkpoints: Path, *, keep_last: int) -> list[int]:
    """Delete all but the newest ``keep_last`` checkpoints and their exports (rank 0)."""
    found = complete_checkpoints(checkpoints)
    removed = []
    for step, path in found[: max(0, len(found) - keep_last)]:
        shutil.rmtree(path)
        for suffix in ("_reg_model.pt", "_ema_model.pt", ".json"):
            (checkpoints / f"iter_{step:09d}{suffix}").unlink(missing_ok=True)
        removed.append(step)
    return removed


def remove_temp_folders(checkpoints: Path) -> None:
    """Drop temp folders left by a run killed while saving (rank 0, before training)."""
    if checkpoints.is_dir():
        for path in checkpoints.glob(".step_*.tmp"):
            shutil.rmtree(path, ignore_errors=True)


def _full_cpu(tensor: torch.Tensor) -> torch.Tensor:
    full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
    return full.detach().to("cpu")


def _write_json(path: Path, record: Mapping[str, Any]) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    with temp.open("w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
