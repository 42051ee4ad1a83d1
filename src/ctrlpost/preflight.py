"""`ctrlpost verify`: staged checks that collect every problem of a job before anything runs.

Each stage returns its problems instead of raising, so one run reports everything at once. A
stage that needs an earlier stage's result is skipped when that stage failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from ctrlpost.errors import CtrlpostError, RecipeError
from ctrlpost.recipe import Recipe, RecipeInvalid


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the job: the stage that found it, where, and what."""

    stage: str
    path: str
    message: str


@dataclass
class StageResult:
    """The outcome of one stage."""

    name: str
    status: str  # "ok", "failed" or "skipped"
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    """Every stage's outcome, in order."""

    recipe: str
    stages: list[StageResult]

    @property
    def problems(self) -> list[Problem]:
        return [p for stage in self.stages for p in stage.problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The ``verify --json`` document."""
        return {
            "ok": self.ok,
            "recipe": self.recipe,
            "problems": [vars(p) for p in self.problems],
            "stages": [
                {"name": s.name, "status": s.status, "seconds": round(s.seconds, 4),
                 "summary": s.summary}
                for s in self.stages
            ],
        }


@dataclass
class Context:
    """What the stages share: the recipe once loaded, and the plugin manager to use."""

    recipe_path: str
    overrides: Sequence[str]
    plugins: pluggy.PluginManager | None = None
    recipe: Recipe | None = None


StageFn = Callable[[Context], tuple[list[Problem], dict[str, Any]]]


def recipe_stage(ctx: Context) -> tuple[list[Problem], dict[str, Any]]:
    """The recipe parses and validates."""
    from ctrlpost import recipe as recipes

    try:
        ctx.recipe = recipes.load(ctx.recipe_path, ctx.overrides)
    except RecipeInvalid as exc:
        return [Problem("recipe", p.path, p.message) for p in exc.problems], {}
    except RecipeError as exc:
        return [Problem("recipe", "", exc.message)], {}
    rec = ctx.recipe
    return [], {"run_dir": str(rec.run_dir()), "flavor": rec.model.flavor,
                "steps": rec.train.steps}


def plugins_stage(ctx: Context) -> tuple[list[Problem], dict[str, Any]]:
    """Every control names an installed modality and its params pass the plugin's model."""
    from pydantic import ValidationError

    from ctrlpost.modalities import registry

    assert ctx.recipe is not None
    problems: list[Problem] = []
    try:
        installed = registry.installed_modalities(ctx.plugins)
    except CtrlpostError as exc:
        return [Problem("plugins", "control", exc.message)], {}
    if len(ctx.recipe.control) > 1:
        problems.append(Problem("plugins", "control", "one [[control]] per run is supported; "
                                "train each modality in its own recipe"))
    for i, control in enumerate(ctx.recipe.control):
        where = f"control[{i}]"
        try:
            modality = registry.get_modality(control.modality, ctx.plugins)
        except CtrlpostError as exc:
            hint = f"; {exc.hint}" if exc.hint else ""
            problems.append(Problem("plugins", f"{where}.modality", exc.message + hint))
            continue
        try:
            modality.validate_params(control.params)
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                problems.append(Problem("plugins", f"{where}.params.{loc}",
                                        f"{err['msg']} ({modality.name} plugin)"))
    return problems, {"installed": list(installed),
                      "controls": [c.modality for c in ctx.recipe.control]}


STAGES: dict[str, StageFn] = {"recipe": recipe_stage, "plugins": plugins_stage}


def run(
    recipe_path: str | Path,
    overrides: Sequence[str] = (),
    *,
    stages: Sequence[str] = tuple(STAGES),
    plugins: pluggy.PluginManager | None = None,
) -> Report:
    """Run the named stages in order and collect their problems."""
    ctx = Context(recipe_path=str(recipe_path), overrides=overrides, plugins=plugins)
    results: list[StageResult] = []
    for name in stages:
        if name != "recipe" and ctx.recipe is None:
            results.append(StageResult(name, "skipped", summary={"reason": "recipe is invalid"}))
            continue
        start = time.perf_counter()
        problems, summary = STAGES[name](ctx)
        status = "failed" if problems else "ok"
        results.append(StageResult(name, status, time.perf_counter() - start, problems, summary))
    return Report(recipe=str(recipe_path), stages=results)
