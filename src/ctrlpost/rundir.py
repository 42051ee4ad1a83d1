"""Every name inside a run folder, in one place: the engine writes with these and `ctrlpost
inspect` reads with them. No torch, nothing of ctrlpost.

```
<run>/recipe.toml                          the resolved recipe
<run>/versions.json                        the versions of the packages that decide the numbers
<run>/metrics.jsonl                        one record per logged step and per validation
<run>/tb/                                  TensorBoard events
<run>/logs/rank{R}.log                     each rank's log (every attempt appends)
<run>/logs/launcher/                       the elastic launcher's copy of each rank's output
<run>/checkpoints/step_{N:09}/             DCP training state, complete once meta.json is in
<run>/checkpoints/step_{N:09}.damaged/     a damaged checkpoint that resume renamed aside
<run>/checkpoints/iter_{N:09}_reg_model.pt the released-layout exports of step N, the EMA
<run>/checkpoints/iter_{N:09}_ema_model.pt   weights and their sidecar record
<run>/checkpoints/iter_{N:09}.json
<run>/validation/step_{N:09}/              a PNG strip per validation clip, and scores.json
<run>/fidelity/<label>/                    the strips of `verify --fidelity`
<run>/.train.lock                          held while `ctrlpost train` writes the run
<run>/.rank_recipe.json                    the resolved recipe the launcher hands its ranks
```

Anything being written carries a temp name (:data:`ctrlpost.files.TEMP_GLOB`) until it is
complete; a run sweeps those on start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RECIPE = "recipe.toml"
RECIPE_HISTORY = "recipes"  # every start's recipe: start_001.toml, start_002.toml, ...
VERSIONS = "versions.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tb"
LOGS = "logs"
LAUNCHER_LOGS = "launcher"
CHECKPOINTS = "checkpoints"
META = "meta.json"
"""In a checkpoint folder: written last, so its presence means the checkpoint is complete."""
DAMAGED = ".damaged"
"""Suffix of a damaged checkpoint's folder once renamed aside."""
EXPORT_SUFFIXES = ("_reg_model.pt", "_ema_model.pt", ".json")
"""After ``iter_{N:09}``: regular weights, EMA weights, sidecar (in this order)."""
VALIDATION = "validation"
SCORES = "scores.json"
FIDELITY = "fidelity"
LOCK = ".train.lock"
RANK_RECIPE = ".rank_recipe.json"
STEP_DIGITS = 9

STEP_DIR = re.compile(rf"^step_(\d{{{STEP_DIGITS}}})$")
"""A checkpoint or validation folder's name; group 1 is the step."""
EXPORT = re.compile(rf"^iter_(\d{{{STEP_DIGITS}}})(?:_reg_model\.pt|_ema_model\.pt|\.json)$")
"""An export the engine writes (weights or sidecar); group 1 is the step."""
EXPORT_WEIGHTS = re.compile(r"^(iter_(\d+))_(reg|ema)_model(_only)?\.pt$")
"""Exported weights, also as other tools name them (any digits, ``_ema_model_only.pt``):
group 1 is the stem (``iter_N``), 2 the iteration, 3 ``reg`` or ``ema``."""


def step_name(step: int) -> str:
    """``step_{N:09}``: the folder of a checkpoint, and of a validation, after ``step`` steps."""
    return f"step_{step:0{STEP_DIGITS}d}"


def step_of(name: str) -> int | None:
    """N of a folder named ``step_{N:09}``; None for any other name."""
    match = STEP_DIR.match(name)
    return int(match.group(1)) if match else None


def export_names(step: int) -> list[str]:
    """The exports of ``step``: regular weights, EMA weights, sidecar."""
    return [f"iter_{step:0{STEP_DIGITS}d}{suffix}" for suffix in EXPORT_SUFFIXES]


def rank_log_name(rank: int) -> str:
    """``rank{R}.log``, in the run's ``logs/``."""
    return f"rank{rank}.log"


@dataclass(frozen=True)
class RunDir:
    """The paths of the run folder ``root`` (see the module docstring)."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / RECIPE

    @property
    def versions(self) -> Path:
        return self.root / VERSIONS

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    @property
    def logs(self) -> Path:
        return self.root / LOGS

    @property
    def launcher_logs(self) -> Path:
        return self.logs / LAUNCHER_LOGS

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def validation(self) -> Path:
        return self.root / VALIDATION

    @property
    def fidelity(self) -> Path:
        return self.root / FIDELITY

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def rank_recipe(self) -> Path:
        return self.root / RANK_RECIPE

    def rank_log(self, rank: int) -> Path:
        return self.logs / rank_log_name(rank)

    def step_dir(self, step: int) -> Path:
        """The committed checkpoint of ``step``."""
        return self.checkpoints / step_name(step)

    def exports(self, step: int) -> list[Path]:
        """The exports of ``step``: regular weights, EMA weights, sidecar."""
        return [self.checkpoints / name for name in export_names(step)]

    def validation_step(self, step: int) -> Path:
        """The strips and scores of the validation at ``step``."""
        return self.validation / step_name(step)

    def scores(self, step: int) -> Path:
        return self.validation_step(step) / SCORES


def complete_checkpoints(checkpoints: Path) -> list[tuple[int, Path]]:
    """Committed checkpoints, oldest first (folders with ``meta.json``; temp folders ignored)."""
    if not checkpoints.is_dir():
        return []
    found = [(step, path) for path in checkpoints.iterdir()
             if (step := step_of(path.name)) is not None and (path / META).is_file()]
    return sorted(found)


def finished_step(root: Path, steps: int) -> int | None:
    """The step of the run's newest checkpoint when it reached ``steps`` and its files are all
    there with the sizes ``meta.json`` recorded (and its exports); None when the run has more
    to do, has not started, or that checkpoint needs the engine's closer look (resuming checks
    it and falls back if it is damaged)."""
    import json

    folder = RunDir(root).checkpoints
    done = complete_checkpoints(folder)
    if not done or done[-1][0] < steps:
        return None
    step, path = done[-1]
    try:
        record = json.loads((path / META).read_text(encoding="utf-8"))
        sizes, exports = record["files"], record.get("exports", [])
        intact = all((path / name).stat().st_size == size for name, size in sizes.items())
        exported = all((folder / name).is_file() for name in exports)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return step if intact and exported else None
