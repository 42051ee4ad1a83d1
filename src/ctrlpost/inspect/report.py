"""`ctrlpost inspect`: what a checkpoint or a run directory holds.

A checkpoint's flavor, part and control-block count are detected from its key names and shapes
alone (:func:`describe_layout`), so the same logic runs on a file and on a meta-device layout.
Files are memory-mapped: names, shapes and dtypes cost no tensor reads, and value statistics
(EMA distance, ``--diff``) go one tensor at a time (:mod:`ctrlpost.inspect.compare`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctrlpost.errors import CtrlpostError, WeightsError
from ctrlpost.inspect.compare import Comparison, compare_states
from ctrlpost.inspect.layout import LayoutReport, describe_layout
from ctrlpost.inspect.run import (
    Provenance,
    RunSummary,
    is_run_dir,
    iteration_from_name,
    read_provenance,
    summarize_run,
)
from ctrlpost.models.state_dict import read_checkpoint
from ctrlpost.rundir import CHECKPOINTS, EXPORT_WEIGHTS

if TYPE_CHECKING:
    from collections.abc import Mapping

    from torch import Tensor

__all__ = [
    "CheckpointReport", "DiffReport", "EmaReport", "LayoutReport", "RunReport",
    "describe_checkpoint", "describe_layout", "describe_run", "diff_checkpoints", "inspect_path",
]
_PATH_HINT = "pass a checkpoint file (*.pt) or a run directory (with metrics.jsonl, checkpoints/)"


@dataclass(frozen=True)
class EmaReport:
    """The EMA copy beside a regular export, and how far it is from the regular weights."""

    present: bool = False
    reg_file: Path | None = None
    ema_file: Path | None = None
    comparison: Comparison | None = None  # side a = regular weights, side b = EMA

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"present": self.present,
                               "reg_file": str(self.reg_file) if self.reg_file else None,
                               "ema_file": str(self.ema_file) if self.ema_file else None}
        if self.comparison is not None:
            cmp = self.comparison
            out.update(relative_l2=cmp.relative_l2, max_abs=cmp.max_abs,
                       modules={n: m.to_json() for n, m in cmp.modules.items()},
                       keys_only_in_reg=cmp.only_in_a, keys_only_in_ema=cmp.only_in_b)
        return out


def ema_pair(path: Path) -> tuple[Path, Path] | None:
    """``(reg, ema)`` when ``path`` is one of an exported pair whose other half exists."""
    match = EXPORT_WEIGHTS.match(path.name)
    if match is None:
        return None
    stem = match.group(1)
    if match.group(3) == "ema":
        reg = path.with_name(f"{stem}_reg_model.pt")
        return (reg, path) if reg.is_file() else None
    for name in (f"{stem}_ema_model.pt", f"{stem}_ema_model_only.pt"):
        if path.with_name(name).is_file():
            return path, path.with_name(name)
    return None


@dataclass(frozen=True)
class CheckpointReport:
    """Everything `inspect` says about one checkpoint file."""

    path: Path
    file_bytes: int
    layout: LayoutReport
    dtypes: dict[str, int]
    num_tensors: int
    iteration: int | None
    ema: EmaReport
    provenance: Provenance
    notes: tuple[str, ...] = field(default=())
    modality: str | None = None  # the control modality, when the recipe or file name tells

    def to_json(self) -> dict[str, Any]:
        layout = self.layout
        return {
            "kind": "checkpoint", "path": str(self.path), "flavor": layout.flavor,
            "closest_flavor": layout.closest_flavor, "part": layout.part,
            "num_control_blocks": layout.num_control_blocks, "params": layout.params.to_json(),
            "dtypes": self.dtypes, "num_tensors": self.num_tensors, "file_bytes": self.file_bytes,
            "iteration": self.iteration, "modality": self.modality,
            "key_problems": layout.key_problems(),
            "ema": self.ema.to_json(), "recipe": self.provenance.recipe,
            "recipe_name": (self.provenance.sidecar or {}).get("recipe_name"),
            "recipe_source": self.provenance.recipe_source,
            "versions": self.provenance.versions, "notes": list(self.notes),
        }


def describe_checkpoint(path: Path) -> CheckpointReport:
    """Report on one checkpoint file; tensor values are read only for the EMA distance."""
    state = read_checkpoint(path)
    layout = describe_layout({key: tuple(t.shape) for key, t in state.items()})
    dtypes = Counter(str(t.dtype).removeprefix("torch.") for t in state.values())
    provenance = read_provenance(path)
    iteration = (provenance.sidecar or {}).get("iteration")
    return CheckpointReport(
        path=path, file_bytes=path.stat().st_size, layout=layout,
        dtypes=dict(sorted(dtypes.items())), num_tensors=len(state),
        iteration=iteration if isinstance(iteration, int) else iteration_from_name(path),
        ema=_ema_report(path, state), provenance=provenance, notes=provenance.notes,
        modality=modality_of(path, provenance) if layout.part != "base" else None,
    )


def modality_of(path: Path, provenance: Provenance) -> str | None:
    """The control modality of a checkpoint: the recipe recorded with it (an export of ours),
    else the released file name an installed modality declares (``edge_control.pt``), else
    None (a control branch's weights do not say what hint it follows)."""
    recipe = provenance.recipe if isinstance(provenance.recipe, dict) else {}
    controls = recipe.get("control")
    if isinstance(controls, list) and controls and isinstance(controls[0], dict):
        name = controls[0].get("modality")
        if isinstance(name, str):
            return name
    from ctrlpost.modalities import registry

    for name, modality in registry.installed_modalities().items():
        if modality.released_control_file and path.name == modality.released_control_file:
            return name
    return None


def _ema_report(path: Path, state: Mapping[str, Tensor]) -> EmaReport:
    """Compare the regular and EMA halves of an exported pair (``state`` is ``path``'s)."""
    pair = ema_pair(path)
    if pair is None:
        return EmaReport()
    reg, ema = pair
    reg_state = state if path == reg else read_checkpoint(reg)
    ema_state = state if path == ema else read_checkpoint(ema)
    return EmaReport(present=True, reg_file=reg, ema_file=ema,
                     comparison=compare_states(reg_state, ema_state))


@dataclass(frozen=True)
class DiffReport:
    """``inspect A --diff B``: per-module change from A to B."""

    a: Path
    b: Path
    comparison: Comparison

    def to_json(self) -> dict[str, Any]:
        return {"kind": "diff", "a": str(self.a), "b": str(self.b), **self.comparison.to_json()}


def diff_checkpoints(a: Path, b: Path) -> DiffReport:
    """Compare two checkpoints of one layout tensor by tensor (relative change is ‖a−b‖/‖a‖)."""
    _require_file(b, "--diff")
    state_a, state_b = read_checkpoint(a), read_checkpoint(b)
    if not state_a.keys() & state_b.keys():
        raise WeightsError(f"{a} and {b} have no tensor name in common: different layouts",
                           hint="--diff compares two checkpoints of one layout, e.g. two exports")
    return DiffReport(a, b, compare_states(state_a, state_b))


@dataclass(frozen=True)
class RunReport:
    """A run directory's summary and its newest export's report."""

    run: RunSummary
    checkpoint: CheckpointReport | None
    plot: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": "run", "run": self.run.to_json(),
                "checkpoint": self.checkpoint.to_json() if self.checkpoint else None,
                "plot": str(self.plot) if self.plot else None}


def describe_run(path: Path, *, plot: Path | None = None) -> RunReport:
    """Summarise a run directory; with ``plot``, also draw its metrics to that PNG."""
    run = summarize_run(path)
    newest = run.newest_export()
    if plot is not None:
        from ctrlpost.inspect.plot import plot_metrics

        plot = plot_metrics(run.rows, plot, title=str(run.job.get("name") or path.name))
    return RunReport(run, describe_checkpoint(newest) if newest else None, plot)


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise CtrlpostError(f"{what} {path}: no such file or directory", hint=_PATH_HINT)
    if not path.is_file():
        raise CtrlpostError(f"{what} {path}: not a file", hint="--diff compares two .pt files")


def inspect_path(
    path: Path, *, diff: Path | None = None, plot: Path | None = None
) -> CheckpointReport | RunReport | DiffReport:
    """The report `ctrlpost inspect PATH [--diff OTHER] [--plot OUT.png]` prints."""
    if not path.exists():
        raise CtrlpostError(f"{path}: no such file or directory", hint=_PATH_HINT)
    if path.is_dir():
        if diff is not None:
            example = f"ctrlpost inspect {path}/checkpoints/<a>.pt --diff <b>.pt"
            raise CtrlpostError("--diff compares two checkpoint files, not a run directory",
                                hint=f"e.g. {example}")
        if not is_run_dir(path):
            raise CtrlpostError(f"{path}: not a run directory", hint=_PATH_HINT)
        return describe_run(path, plot=plot)
    if plot is not None:
        run = path.parent.parent if path.parent.name == CHECKPOINTS else None
        example = f"ctrlpost inspect {run} --plot {plot}" if run else "pass the run directory"
        raise CtrlpostError("--plot draws a run's metrics: pass the run directory", hint=example)
    if diff is not None:
        return diff_checkpoints(path, diff)
    return describe_checkpoint(path)
