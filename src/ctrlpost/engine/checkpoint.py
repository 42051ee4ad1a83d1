"""Training checkpoints (torch.distributed.checkpoint) and exports in the released layout.

A training checkpoint is the folder ``<run>/checkpoints/step_{N:09}/``: DCP shards of the
control weights, optimizer, EMA and the trainer state (step, counters, data position). DCP
reshards on load, so any world size resumes any checkpoint. The frozen base is never saved: it
is re-read from the released file.

With ``checkpoint.export_released`` a save also exports ``iter_{N:09}_reg_model.pt`` and
``iter_{N:09}_ema_model.pt`` (flat ``net.*`` tensors, like ``edge_control.pt``) with a sidecar
``iter_{N:09}.json`` (iteration, recipe, package versions) beside the step folders.

One notion of complete: a checkpoint is complete when its folder is committed, that is renamed
from ``.step_{N:09}.tmp`` once the shards, then the exports, then ``meta.json`` (which lists
the exports) are written. A run killed at any moment leaves complete checkpoints, a temp folder,
and at most the exports of a step that never committed; :func:`remove_leftovers` clears the last
two. Resume re-creates any export of the checkpoint it loads that is missing (one copied without
its exports, or written before exports were part of the commit).

Resume also checks that the complete checkpoint it loads is still intact (:func:`restore`): one
whose shards are missing or truncated, whose metadata cannot be read, or whose weights are not
finite is damaged; it is renamed aside to ``step_{N:09}.damaged`` and the run resumes from the
newest intact one before it, or stops with one line when there is none.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from ctrlpost import files, rundir
from ctrlpost.engine.ema import PowerEMA
from ctrlpost.errors import CtrlpostError, LaunchError
from ctrlpost.models.state_dict import save_checkpoint, to_control_layout
from ctrlpost.rundir import DAMAGED, META, complete_checkpoints

_T = TypeVar("_T")


def step_dir(checkpoints: Path, step: int) -> Path:
    """The folder of the committed checkpoint after ``step`` optimizer steps."""
    return checkpoints / rundir.step_name(step)


def export_paths(checkpoints: Path, step: int) -> list[Path]:
    """The released-layout exports of ``step``: regular and EMA weights, and their sidecar."""
    return [checkpoints / name for name in rundir.export_names(step)]


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
         ema: PowerEMA, trainer: TrainingState, meta: Mapping[str, Any],
         sidecar: Mapping[str, Any] | None = None) -> Path:
    """Write and commit the training checkpoint of ``trainer.step`` (collective).

    With ``sidecar`` (the export's ``iter_{N}.json`` record) the released-layout exports are
    written before the commit, so a committed checkpoint always has them.
    """
    final = step_dir(checkpoints, trainer.step)
    temp = files.shared_temp_path(final)  # every rank writes its shards into the same folder
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
    dist.barrier()
    dcp.save(_state(control, optimizer, ema, trainer), checkpoint_id=str(temp))
    dist.barrier()
    exports = [] if sidecar is None else export_released(
        checkpoints, step=trainer.step, control=control, ema=ema, sidecar=sidecar)
    if rank == 0:
        record = {**meta, "step": trainer.step, "world_size": dist.get_world_size(),
                  "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "exports": [path.name for path in exports],
                  # Sizes of the files every rank wrote: a check that needs no torch
                  # (rundir.finished_step) sees a truncated or missing one.
                  "files": {path.name: path.stat().st_size for path in sorted(temp.iterdir())}}
        _write_json(temp / META, record)
        if final.exists():  # a re-run of the same step after a crash: replace it whole
            shutil.rmtree(final)
        # The exports' renames reach the disk before the commit's (the parent is synced first).
        files.commit_folder(temp, final)
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


@dataclass(frozen=True)
class Restored:
    """What :func:`restore` resumed from (``path`` None: a fresh start) and what it reports."""

    path: Path | None
    state: TrainingState
    notes: tuple[str, ...] = ()


def restore(checkpoints: Path, resume: str, *, control: nn.Module,
            optimizer: torch.optim.Optimizer, ema: PowerEMA,
            sidecar: Mapping[str, Any] | None = None) -> Restored:
    """Load the checkpoint ``resume`` asks for, checked (collective; rank 0 decides).

    ``auto`` takes the newest complete checkpoint; one that is damaged (see
    :func:`find_damage`, or with non-finite weights) is renamed aside, named in a note, and the
    one before it is tried. A damaged explicit path, or no undamaged checkpoint left, is a
    :class:`LaunchError`; then nothing is renamed. With ``sidecar`` (exports on), the exports
    of the checkpoint resumed from are written again if any is missing.
    """
    if resume == "never":
        return Restored(None, TrainingState())
    candidates = _from_rank0(lambda: _candidates(checkpoints, resume))
    damaged: list[tuple[Path, str]] = []
    for path in candidates:
        problem = _from_rank0(partial(find_damage, path))
        if problem is None:
            state = _load_or_fail(path, control=control, optimizer=optimizer, ema=ema)
            tensors = [*control.state_dict().values(), *ema.state_dict().values()]
            if all_finite(tensors, device=_device_of(control)):
                notes = _from_rank0(partial(_move_aside, damaged, resuming_from=path))
                if sidecar is not None and export_missing(checkpoints, step=state.step,
                                                          control=control, ema=ema,
                                                          sidecar=sidecar):
                    notes += (f"exported step {state.step} again from {path} (files were "
                              "missing)",)
                return Restored(path, state, notes)
            problem = "non-finite weights"
        if resume != "auto":
            raise LaunchError(f"checkpoint {path} is damaged ({problem})",
                              hint=f"pick another step_* folder under {checkpoints}, or "
                              "checkpoint.resume='auto'")
        damaged.append((path, problem))
    if damaged:
        path, problem = damaged[0]
        older = f" (and {len(damaged) - 1} older ones are damaged too)" if len(damaged) > 1 else ""
        raise LaunchError(f"checkpoint {path} is damaged ({problem}); no complete checkpoint "
                          f"to resume from{older}",
                          hint=f"restore it from a copy, or move it away (e.g. to "
                          f"{path.name}{DAMAGED}) to start over")
    return Restored(None, TrainingState())


def find_damage(path: Path) -> str | None:
    """What is wrong with the files of a committed checkpoint, or None.

    Reads ``meta.json`` and DCP's ``.metadata``, and checks that every shard file the metadata
    lists exists and is long enough for the items stored in it (no tensor is read).
    """
    try:
        json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"unreadable {META}: {type(exc).__name__}"
    try:
        metadata = FileSystemReader(str(path)).read_metadata()
    except FileNotFoundError:
        return "missing .metadata"
    except Exception as exc:  # unpickling fails in many ways; all of them mean unreadable
        return f"unreadable .metadata: {type(exc).__name__}"
    needed: dict[str, int] = {}
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        end = int(info.offset) + int(info.length)
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for name, size in sorted(needed.items()):
        shard = path / name
        if not shard.is_file():
            return f"missing shard {name}"
        actual = shard.stat().st_size
        if actual < size:
            return f"truncated shard {name}: {actual} of {size} bytes"
    return None


def all_finite(tensors: Iterable[torch.Tensor], *, device: torch.device) -> bool:
    """Whether every element of ``tensors`` is finite on every rank (collective).

    One fused read of the local shards (the max-abs of each tensor: NaN or inf if any element
    is) and one all-reduce of a scalar.
    """
    local = [t.to_local() if isinstance(t, DTensor) else t for t in tensors]
    local = [t.detach() for t in local if t.numel() and t.is_floating_point()]
    bad = torch.zeros((), device=device)
    if local:
        peaks = torch.stack(torch._foreach_norm(local, float("inf")))  # promotes mixed dtypes
        bad = (~torch.isfinite(peaks)).any().to(device, torch.float32)
    dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bool(bad.item() == 0)


def export_missing(checkpoints: Path, *, step: int, control: nn.Module, ema: PowerEMA,
                   sidecar: Mapping[str, Any]) -> list[Path]:
    """Export ``step`` again if any of its exports is missing (collective); the files written.

    For the checkpoint a run resumes from: one copied without its exports, or written before
    exports were part of the commit. The weights are the loaded ones, so the files equal what
    the save would have written.
    """
    missing = _from_rank0(lambda: any(not p.is_file() for p in export_paths(checkpoints, step)))
    if not missing:
        return []
    return export_released(checkpoints, step=step, control=control, ema=ema, sidecar=sidecar)


def _candidates(checkpoints: Path, resume: str) -> list[Path]:
    """The checkpoints to try, newest first."""
    if resume == "auto":
        return [path for _, path in reversed(complete_checkpoints(checkpoints))]
    chosen = resolve_resume(checkpoints, resume)
    return [] if chosen is None else [chosen]


def _load_or_fail(path: Path, **parts: Any) -> TrainingState:
    """:func:`load`, with a failure past :func:`find_damage` (corrupt bytes, keys that do not
    match the model) as one line; the traceback goes to the rank's log."""
    try:
        return load(path, **parts)
    except Exception as exc:
        raise LaunchError(f"cannot load checkpoint {path}: {_summary(exc)}",
                          hint="the rank logs have the details; pick another checkpoint with "
                          "checkpoint.resume=PATH") from exc


def _summary(exc: BaseException) -> str:
    """The first line of the innermost error (DCP wraps each rank's failure)."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, Mapping) and failures:
        inner = next(iter(failures.values()))
        exc = getattr(inner, "exc", inner) if isinstance(inner, BaseException) else exc
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _move_aside(damaged: list[tuple[Path, str]], *, resuming_from: Path) -> tuple[str, ...]:
    """Rename each damaged checkpoint to ``step_N.damaged`` (rank 0), so that redoing step N
    does not overwrite it; one note each."""
    notes = []
    for path, problem in damaged:
        aside = path.with_name(path.name + DAMAGED)
        copies = 1
        while aside.exists():
            copies += 1
            aside = path.with_name(f"{path.name}{DAMAGED}.{copies}")
        os.replace(path, aside)
        notes.append(f"checkpoint {path} is damaged ({problem}); resuming from {resuming_from} "
                     f"(kept the damaged one as {aside.name})")
    return tuple(notes)


def _from_rank0(compute: Callable[[], _T]) -> _T:
    """``compute()`` run on rank 0, its result (or its :class:`CtrlpostError`) on every rank,
    so that all ranks take the same decision about the files."""
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = (True, compute())
        except CtrlpostError as exc:
            box[0] = (False, exc)
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def _device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


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
    reg_path, ema_path, json_path = export_paths(checkpoints, step)
    save_checkpoint(to_control_layout(regular), reg_path)
    save_checkpoint(to_control_layout({**regular, **averages}), ema_path)
    _write_json(json_path, {**sidecar, "iteration": step,
                            "files": [reg_path.name, ema_path.name]})
    return [reg_path, ema_path, json_path]


def prune(checkpoints: Path, *, keep_last: int) -> list[int]:
    """Delete all but the newest ``keep_last`` checkpoints and their exports (rank 0)."""
    found = complete_checkpoints(checkpoints)
    removed = []
    for step, path in found[: max(0, len(found) - keep_last)]:
        shutil.rmtree(path)
        for export in export_paths(checkpoints, step):
            export.unlink(missing_ok=True)
        removed.append(step)
    return removed


def remove_leftovers(run_dir: Path, checkpoints: Path) -> list[Path]:
    """Remove what a run killed while writing left behind (rank 0, before anything is written).

    That is every temp file or folder (:data:`ctrlpost.files.TEMP_GLOB`) anywhere in the run
    folder (checkpoint temp folders, exports, sidecars, recipe, versions, metrics, validation
    scores and strips), and exports newer than the newest committed checkpoint: they belong to
    a save whose commit never came. Returns what it removed.
    """
    removed = files.remove_temps(run_dir, recursive=True)
    found = complete_checkpoints(checkpoints)
    newest = found[-1][0] if found else -1
    if checkpoints.is_dir():
        for path in sorted(checkpoints.glob("iter_*")):
            match = rundir.EXPORT.match(path.name)
            if match and int(match.group(1)) > newest:
                path.unlink()
                removed.append(path)
    return removed


def _full_cpu(tensor: torch.Tensor) -> torch.Tensor:
    full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
    return full.detach().to("cpu")


def _write_json(path: Path, record: Mapping[str, Any]) -> None:
    files.write_text_atomic(path, json.dumps(record, indent=2))
