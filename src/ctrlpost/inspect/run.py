"""What a training run leaves on disk, read back for `ctrlpost inspect`: no torch needed.

A run directory holds ``recipe.toml`` (the resolved recipe), ``versions.json``, ``metrics.jsonl``
(one JSON object per logged step, plus one per validation with its ``fidelity`` table),
``checkpoints/`` with DCP training states ``step_{N:09}/`` (complete once ``meta.json`` is in)
and the exports ``iter_{N:09}_{reg,ema}_model.pt``, each with an optional sidecar
``iter_{N:09}.json``, and ``validation/step_{N:09}/`` with a PNG strip per validation clip and
``scores.json``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ctrlpost import rundir
from ctrlpost.rundir import EXPORT_WEIGHTS, RunDir

_RUN_MARKERS = (rundir.METRICS, rundir.RECIPE, rundir.CHECKPOINTS, rundir.VALIDATION)
_HEADLINE = ("loss", "lr", "grad_norm", "samples_per_s")

Row = dict[str, Any]


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` looks like a run directory (any of its well-known entries exists)."""
    return path.is_dir() and any((path / name).exists() for name in _RUN_MARKERS)


@dataclass(frozen=True)
class Provenance:
    """The recipe and package versions recorded with a checkpoint, and where they came from."""

    recipe: dict[str, Any] | str | None = None
    recipe_source: str | None = None
    versions: dict[str, Any] | None = None
    sidecar: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()


def sidecar_path(checkpoint: Path) -> Path | None:
    """``iter_{N}.json`` beside an exported ``iter_{N}_{reg,ema}_model.pt``; None otherwise."""
    match = EXPORT_WEIGHTS.match(checkpoint.name)
    return checkpoint.with_name(f"{match.group(1)}.json") if match else None


def iteration_from_name(checkpoint: Path) -> int | None:
    """N of ``iter_{N}_…``."""
    match = EXPORT_WEIGHTS.match(checkpoint.name)
    return int(match.group(2)) if match else None


def read_provenance(checkpoint: Path) -> Provenance:
    """The sidecar's ``recipe``/``versions``, else the run directory's files (when the checkpoint
    sits in ``<run>/checkpoints/``). Unreadable records become notes, never errors."""
    notes: list[str] = []
    sidecar: dict[str, Any] | None = None
    side = sidecar_path(checkpoint)
    if side is not None and side.is_file():
        loaded = _read_json(side, notes)
        sidecar = loaded if isinstance(loaded, dict) else None
    recipe = _parse_recipe((sidecar or {}).get("recipe"), notes)
    source = str(side) if recipe is not None else None
    versions = (sidecar or {}).get("versions")
    run = (RunDir(checkpoint.parent.parent) if checkpoint.parent.name == rundir.CHECKPOINTS
           else None)
    if recipe is None and run is not None and run.recipe.is_file():
        recipe, source = read_recipe(run.recipe, notes), str(run.recipe)
    if versions is None and run is not None and run.versions.is_file():
        versions = _read_json(run.versions, notes)
    return Provenance(
        recipe=recipe,
        recipe_source=source if recipe is not None else None,
        versions=versions if isinstance(versions, dict) else None,
        sidecar=sidecar,
        notes=tuple(notes),
    )


def _read_json(path: Path, notes: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        notes.append(f"{path}: unreadable ({exc})")
        return None


def _parse_recipe(recipe: Any, notes: list[str]) -> dict[str, Any] | str | None:
    """A sidecar's recipe: a dict, or resolved TOML text (parsed; kept as text if it fails)."""
    if isinstance(recipe, str):
        try:
            return tomllib.loads(recipe)
        except tomllib.TOMLDecodeError as exc:
            notes.append(f"recorded recipe is not valid TOML ({exc}); shown as text")
            return recipe
    return recipe if isinstance(recipe, dict) else None


def read_recipe(path: Path, notes: list[str]) -> dict[str, Any] | None:
    """The raw TOML of a recorded recipe (not validated: its plugins may not be installed)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        notes.append(f"{path}: unreadable ({exc})")
        return None


def read_metrics(path: Path) -> tuple[list[Row], int]:
    """Rows of ``metrics.jsonl`` (nested values flattened) and the number of malformed lines.

    A malformed *last* line is not counted: a running trainer may be half-way through it.
    """
    if not path.is_file():
        return [], 0
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows: list[Row] = []
    bad = 0
    for index, line in enumerate(lines):
        try:
            row = json.loads(line)
        except ValueError:
            bad += index < len(lines) - 1
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(_flatten(row))
        else:
            bad += 1
    return rows, bad


def _flatten(row: Row) -> Row:
    """Nested tables become dotted columns: ``{"fidelity": {"f1": x}}`` → ``fidelity.f1``."""
    flat: Row = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in _flatten(value).items()})
        else:
            flat[key] = value
    return flat


def first_value(rows: Sequence[Row], key: str) -> Any:
    """The first logged value of ``key``, or None."""
    return next((row[key] for row in rows if row.get(key) is not None), None)


def last_value(rows: Sequence[Row], key: str) -> Any:
    """The last logged value of ``key``, or None."""
    return next((row[key] for row in reversed(rows) if row.get(key) is not None), None)


@dataclass(frozen=True)
class RunSummary:
    """One run directory at a glance."""

    path: Path
    recipe: dict[str, Any] | None
    versions: dict[str, Any] | None
    rows: tuple[Row, ...]
    bad_lines: int
    complete_steps: tuple[int, ...]
    incomplete_states: tuple[str, ...]
    exports: tuple[str, ...]
    notes: tuple[str, ...] = ()
    validations: tuple[tuple[int, tuple[str, ...]], ...] = ()  # (step, strip PNG names)

    @property
    def job(self) -> dict[str, Any]:
        """The recipe's ``[job]`` table (project, group, name, seed)."""
        job = (self.recipe or {}).get("job")
        return job if isinstance(job, dict) else {}

    @property
    def extra_columns(self) -> list[str]:
        """Metric columns beyond the headline ones: ``fidelity*`` and the validation cost."""
        names = {key for row in self.rows for key in row if key.startswith("fidelity")}
        if any("validation_s" in row for row in self.rows):
            names.add("validation_s")
        return sorted(names)

    def strips(self, step: int | None = None) -> list[Path]:
        """The PNG strips of the validation at ``step`` (default: the latest)."""
        if not self.validations:
            return []
        found = dict(self.validations)
        chosen = max(found) if step is None else step
        folder = RunDir(self.path).validation_step(chosen)
        return [folder / name for name in found.get(chosen, ())]

    def metrics(self) -> dict[str, Any]:
        """Steps logged, first/last loss and the last of every headline and extra column."""
        out: dict[str, Any] = {
            "steps_logged": sum("loss" in row for row in self.rows),
            "first_step": self.rows[0]["step"] if self.rows else None,
            "last_step": self.rows[-1]["step"] if self.rows else None,
            "first_loss": first_value(self.rows, "loss"),
        }
        out.update({f"last_{key}": last_value(self.rows, key) for key in _HEADLINE})
        out["extra"] = {key: last_value(self.rows, key) for key in self.extra_columns}
        return out

    def newest_export(self) -> Path | None:
        """The export with the highest iteration; the regular weights before the EMA copy."""
        ranked = []
        for name in self.exports:
            match = EXPORT_WEIGHTS.match(name)
            if match:
                ranked.append((int(match.group(2)), match.group(3) == "reg", name))
        return RunDir(self.path).checkpoints / max(ranked)[2] if ranked else None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "recipe_name": self.job.get("name"),
            "job": self.job,
            "metrics": self.metrics(),
            "bad_metric_lines": self.bad_lines,
            "checkpoints": {
                "complete_steps": list(self.complete_steps),
                "incomplete": list(self.incomplete_states),
                "exports": list(self.exports),
            },
            "validation": {
                "steps": [step for step, _ in self.validations],
                "strips": {str(step): [str(RunDir(self.path).validation_step(step) / n)
                                       for n in names] for step, names in self.validations},
            },
            "recipe": self.recipe,
            "versions": self.versions,
            "notes": list(self.notes),
        }


def summarize_run(path: Path) -> RunSummary:
    """Read a run directory's records; missing ones are simply absent from the summary."""
    notes: list[str] = []
    run = RunDir(path)
    recipe = read_recipe(run.recipe, notes) if run.recipe.is_file() else None
    versions = _read_json(run.versions, notes) if run.versions.is_file() else None
    rows, bad = read_metrics(run.metrics)
    if bad:
        notes.append(f"{run.metrics}: {bad} malformed line(s) skipped")
    complete, incomplete, exports = _list_checkpoints(run.checkpoints)
    return RunSummary(
        path=path,
        recipe=recipe,
        versions=versions if isinstance(versions, dict) else None,
        rows=tuple(rows),
        bad_lines=bad,
        complete_steps=tuple(complete),
        incomplete_states=tuple(incomplete),
        exports=tuple(exports),
        notes=tuple(notes),
        validations=tuple(_list_validations(run.validation)),
    )


def _list_validations(folder: Path) -> list[tuple[int, tuple[str, ...]]]:
    """``(step, strip names)`` of every ``validation/step_N/`` folder, oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        step = rundir.step_of(entry.name)
        if entry.is_dir() and step is not None:
            strips = tuple(sorted(p.name for p in entry.glob("*.png") if p.is_file()))
            found.append((step, strips))
    return sorted(found)


def _list_checkpoints(folder: Path) -> tuple[list[int], list[str], list[str]]:
    """Complete DCP steps, incomplete state folders (interrupted saves) and export files."""
    if not folder.is_dir():
        return [], [], []
    complete: list[int] = []
    incomplete: list[str] = []
    exports: list[str] = []
    for entry in sorted(folder.iterdir()):
        step = rundir.step_of(entry.name)
        if entry.is_dir() and step is not None and (entry / rundir.META).is_file():
            complete.append(step)
        elif entry.is_dir() and "step_" in entry.name:
            incomplete.append(entry.name)
        elif entry.is_file() and EXPORT_WEIGHTS.match(entry.name):
            exports.append(entry.name)
    return sorted(complete), incomplete, exports
