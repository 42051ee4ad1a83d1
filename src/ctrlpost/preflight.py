"""`ctrlpost verify`: staged checks that collect every problem of a job before anything runs.

Each stage returns its problems instead of raising, so one run reports everything at once. A
stage that needs an earlier stage's result is skipped when that stage failed.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from ctrlpost.errors import CtrlpostError
from ctrlpost.recipe import MISSING_TENSORBOARD, Recipe, RecipeInvalid

if TYPE_CHECKING:
    from ctrlpost.models.args import Flavor


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
    """Every stage's outcome, in order, and the recipe as the recipe stage loaded it (None when
    it is invalid): the command goes on with that, without loading the file again."""

    recipe: str
    stages: list[StageResult]
    resolved: Recipe | None = None

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
    gpus: int | None = None  # layout stage: None = parallel.nnodes × parallel.nproc_per_node
    gpu_memory_gib: float = 80.0
    deep: bool = False  # data stage: decode every frame of every clip


StageFn = Callable[[Context], tuple[list[Problem], dict[str, Any]]]


def recipe_stage(ctx: Context) -> tuple[list[Problem], dict[str, Any]]:
    """The recipe validates. A file that is missing or not TOML raises its one-line
    :class:`~ctrlpost.errors.RecipeError` (path and fix) instead: with nothing to check, a
    report would add nothing, and `train` would bury the line in its summary."""
    from ctrlpost import recipe as recipes

    try:
        if ctx.recipe is None:  # a command that already loaded it passes it in
            ctx.recipe = recipes.load(ctx.recipe_path, ctx.overrides)
    except RecipeInvalid as exc:
        return [Problem("recipe", p.path, p.message) for p in exc.problems], {}
    rec = ctx.recipe
    summary: dict[str, Any] = {"run_dir": str(rec.run_dir()), "flavor": rec.model.flavor,
                               "steps": rec.train.steps}
    warning = local_ranks_warning(rec.parallel.nproc_per_node, rec.parallel.backend)
    if warning:
        summary["warning"] = warning
    return [], summary


def local_ranks_warning(nproc: int, backend: str) -> str | None:
    """A warning when this machine cannot give each local rank its own GPU (or CPU, for ranks
    on CPUs); None when it can. Only a warning: `verify` often runs on another machine than
    the job. Read without importing torch (~2 s): NVIDIA's driver lists each GPU under /proc."""
    gpus = 0
    if backend != "gloo":
        with contextlib.suppress(OSError):
            gpus = len(os.listdir("/proc/driver/nvidia/gpus"))
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            gpus = min(gpus, len([d for d in visible.split(",") if d.strip()]))
    have, kind = (gpus, "GPU(s)") if gpus else (_cpus(), "CPU(s) and no GPU")
    if nproc <= have:
        return None
    return (f"parallel.nproc_per_node = {nproc} but this machine has {have} {kind}: to train "
            f"here, set parallel.nproc_per_node = {have} or run `ctrlpost train --nproc {have}`")


def _cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - macOS and Windows


def extras_problems(ctx: Context) -> list[Problem]:
    """Recipe keys that turn on a feature whose optional package (an extra of ctrlpost) is not
    installed. Tried by importing it (a few ms): no rank finds out half-way."""
    assert ctx.recipe is not None
    problems = []
    if ctx.recipe.logging.tensorboard and not _importable("tensorboard"):
        problems.append(Problem("plugins", "logging.tensorboard", MISSING_TENSORBOARD))
    return problems


def base_precision_problems(ctx: Context) -> list[Problem]:
    """What the recipe's base precision says it cannot run here (its plugin's ``problems``, given
    the flavor's base and the tokens of the recipe's largest bucket), under its key."""
    from ctrlpost.engine import memory
    from ctrlpost.modalities import registry

    assert ctx.recipe is not None
    rec = ctx.recipe
    precision = registry.get_base_precision(rec.model.base_precision, ctx.plugins)
    if precision.problems is None:
        return []
    flavor = _architecture(ctx)
    job = memory.training_job(rec.data, rec.train, rec.model, rec.parallel, world_size=1)
    tokens = job.tokens(memory.model_dims(flavor))
    return [Problem("plugins", "model.base_precision", message)
            for message in precision.problems(flavor.base, tokens)]


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except (ImportError, OSError):  # OSError: a library it loads at import is missing
        return False
    return True


def plugins_stage(ctx: Context) -> tuple[list[Problem], dict[str, Any]]:
    """Every control names an installed modality and its params pass the plugin's model, and
    every optional package the recipe turns on is installed (:func:`extras_problems`), the base
    precision can run (:func:`base_precision_problems`); the
    summary names the plugins providing the recipe's data source and flavor (the recipe stage
    checked that they are registered)."""
    from pydantic import ValidationError

    from ctrlpost.modalities import registry

    assert ctx.recipe is not None
    problems: list[Problem] = extras_problems(ctx) + base_precision_problems(ctx)
    try:
        installed = registry.installed_modalities(ctx.plugins)
        chosen = (("data_source", "data source", ctx.recipe.data.source),
                  ("flavor", "flavor", ctx.recipe.model.flavor),
                  ("base_precision", "base precision", ctx.recipe.model.base_precision))
        providers = {key: f"{name} ({registry.origin_of(name, ctx.plugins, kind)})"
                     for key, kind, name in chosen}
    except CtrlpostError as exc:
        return [*problems, Problem("plugins", "control", exc.message)], {}
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
                      "controls": [c.modality for c in ctx.recipe.control], **providers}


def _architecture(ctx: Context) -> Flavor:
    """The recipe's flavor, as the plugin that registers it builds it."""
    from ctrlpost.modalities import registry

    assert ctx.recipe is not None
    return registry.get_flavor(ctx.recipe.model.flavor, ctx.plugins).build()


def weights_stage(ctx: Context) -> tuple[list[Problem], dict[str, Any]]:
    """The recipe's checkpoint files exist and match the flavor's keys and shapes exactly.

    Only names and shapes are read (memory-mapped); no tensor reaches a GPU.
    """
    from ctrlpost.models import args as flavors
    from ctrlpost.models import state_dict

    assert ctx.recipe is not None
    weights, model = ctx.recipe.weights, ctx.recipe.model
    try:
        flavor = flavors.with_control_blocks(_architecture(ctx), model.num_control_blocks)
    except ValueError as exc:
        return [Problem("weights", "model.num_control_blocks", str(exc))], {}
    root = Path(weights.dir)
    files: dict[str, tuple[Path, dict[str, tuple[int, ...]] | None]] = {
        "weights.base": (root / weights.base, state_dict.released_layout(flavor, "base")),
    }
    if weights.control is not None:
        files["weights.control"] = (root / weights.control,
                                    state_dict.released_layout(flavor, "control"))
    for name in ("encoder.jit", "decoder.jit", "mean_std.pt"):
        files[f"weights.tokenizer/{name}"] = (root / weights.tokenizer / name, None)
    problems = _online_model_problems(ctx)
    checked: dict[str, str] = {}
    for key, (path, layout) in files.items():
        if not path.is_file():
            problems.append(Problem("weights", key, f"{path} not found; run "
                                    f"`ctrlpost fetch-weights {ctx.recipe_path}`"))
            continue
        if layout is not None:
            try:
                found = state_dict.check_checkpoint_keys(path, layout)
            except CtrlpostError as exc:
                problems.append(Problem("weights", key, exc.message))
                continue
            if found:
                problems.append(Problem("weights", key,
                                        state_dict.describe_problems(path, found)))
                continue
        checked[key] = str(path)
    encoder = "weights.tokenizer/encoder.jit"
    if ctx.recipe.parallel.compile_tokenizer and encoder in checked:
        from ctrlpost.models.tokenizer import COMPILE_HINT, encoder_compile_problem

        problem = encoder_compile_problem(Path(checked[encoder]))
        if problem:
            problems.append(Problem("weights", "parallel.compile_tokenizer",
                                    f"{problem}; {COMPILE_HINT}"))
    return problems, {"flavor": flavor.name, "checked": list(checked)}


def _online_model_problems(ctx: Context) -> list[Problem]:
    """A control whose hint is computed while training needs its models in ``weights.dir``."""
    from ctrlpost.modalities import registry
    from ctrlpost.weights import annotation

    assert ctx.recipe is not None
    problems: list[Problem] = []
    for index, control in enumerate(ctx.recipe.control):
        hint = registry.control_online_hint(control.modality, control.params)
        for repo in annotation.missing_models(ctx.recipe.weights.dir, hint.models if hint else ()):
            problems.append(Problem(
                "weights", f"control.{index}.params.source",
                f"the online {control.modality} hint runs {repo}, not found in "
                f"{annotation.model_folder(ctx.recipe.weights.dir, repo)}; run "
                f"`ctrlpost fetch-weights {ctx.recipe_path}`"))
    return problems


def data_stage(ctx: Context) -> tuple[list[Problem], dict[str, Any]]:
    """Every clip decodes and is long enough, has a caption, a well-formed embedding and the
    hint file its modality reads (if any), and still has the sha256 the dataset's manifest
    recorded for it (clips it lists).

    ``ctx.deep`` decodes every frame instead of the first and the last.
    """
    from ctrlpost.data.checks import check_dataset
    from ctrlpost.data.fetch import manifest
    from ctrlpost.data.layout import DatasetLayout
    from ctrlpost.modalities import registry

    assert ctx.recipe is not None
    data = ctx.recipe.data
    records = manifest.load(DatasetLayout(Path(data.root)).manifest)
    hint_files = tuple(registry.control_hint_file(c.modality, c.params)
                       for c in ctx.recipe.control)
    problems, summary = check_dataset(
        data.root, num_frames=data.num_frames, resolution=data.resolution,
        text_dim=_architecture(ctx).base.text_dim, recipe=ctx.recipe_path,
        sha256={r.id: r.sha256 for r in records.values() if r.usable and r.sha256},
        deep=ctx.deep, hint_files=tuple(h for h in hint_files if h is not None),
    )
    found = [Problem("data", p.path, p.message) for p in problems]
    root = ctx.recipe.validation.root
    if ctx.recipe.validation.every_steps and root is not None:
        clips = DatasetLayout(Path(root))
        if not clips.clips():
            found.append(Problem("data", "validation.root", f"{clips.videos} has no .mp4 clips; "
                                 "fill it like data.root (videos/, then `ctrlpost embed`)"))
    return found, summary


def layout_stage(ctx: Context) -> tuple[list[Problem], dict[str, Any]]:
    """The per-GPU memory estimate of a step fits ``ctx.gpus`` GPUs of ``ctx.gpu_memory_gib``.

    The estimate (``engine.memory``) takes the family's largest aspect bucket and the recipe's
    frames, batch, checkpointing and precision; ``"auto"`` checkpointing is planned for that
    GPU, block by block, as `train` plans it. A job that does not fit gets the cheapest fix.
    """
    from ctrlpost.engine import memory as layout
    from ctrlpost.models import args as flavors

    assert ctx.recipe is not None
    rec, par = ctx.recipe, ctx.recipe.parallel
    try:
        flavor = flavors.with_control_blocks(_architecture(ctx), rec.model.num_control_blocks)
    except ValueError as exc:
        return [Problem("layout", "model.num_control_blocks", str(exc))], {}
    gpus = ctx.gpus or par.nnodes * par.nproc_per_node
    job = layout.training_job(rec.data, rec.train, rec.model, par, world_size=gpus)
    verdict = layout.check(layout.model_dims(flavor), job, gpu_memory_gib=ctx.gpu_memory_gib)
    est = verdict.estimate
    shape = f"{job.width}x{job.height}"
    summary: dict[str, Any] = {
        "device": "CPU processes (gloo)" if par.backend == "gloo" else "GPUs",
        "bucket_reason": f"the largest bucket of resolution {rec.data.resolution!r}: the "
                         "memory of the worst clip",
        "gpus": gpus, "gpu_memory_gib": ctx.gpu_memory_gib, "bucket": shape,
        "tokens": est.tokens, "checkpointing": par.activation_checkpointing,
        "checkpointing_plan": est.plan.describe(),
        "selective_blocks": est.plan.count("selective"),
        "peak_at": est.moment, "breakdown_gib": est.breakdown_gib(),
        "peak_allocated_gib": round(est.peak_allocated_gib, 1),
        "total_gib": round(est.total_gib, 1), "budget_gib": round(verdict.budget_gib, 1),
        "fits": verdict.fits}
    if verdict.fits:
        return [], summary
    need = (f"needs ~{est.total_gib:.1f} GiB per GPU ({par.activation_checkpointing} "
            f"checkpointing: {est.plan.describe()}; {gpus} GPU(s), {shape}x"
            f"{rec.data.num_frames} frames, batch {rec.train.batch_size}), over "
            f"{verdict.budget_gib:.1f} GiB ({ctx.gpu_memory_gib:g} GiB less 5 %)")
    if verdict.fixed is None:
        return [Problem("layout", "data.resolution", need + "; no checkpointing mode, GPU count "
                        "or frame count makes it fit: use a smaller data.resolution")], summary
    summary["fix"] = verdict.fix()
    key = verdict.changes[-1][0]
    path = "parallel.nproc_per_node" if key == "gpus" else key
    return [Problem("layout", path, f"{need}; set {verdict.fix()} "
                    f"(~{verdict.fixed.total_gib:.1f} GiB: "
                    f"{verdict.fixed.plan.describe()})")], summary


STAGES: dict[str, StageFn] = {"recipe": recipe_stage, "plugins": plugins_stage,
                              "weights": weights_stage, "data": data_stage,
                              "layout": layout_stage}


def run(
    recipe_path: str | Path,
    overrides: Sequence[str] = (),
    *,
    stages: Sequence[str] = tuple(STAGES),
    plugins: pluggy.PluginManager | None = None,
    gpus: int | None = None,
    gpu_memory_gib: float = 80.0,
    deep: bool = False,
    resolved: Recipe | None = None,
) -> Report:
    """Run the named stages in order and collect their problems. ``gpus`` and
    ``gpu_memory_gib`` are what the layout stage checks against (default: the recipe's GPUs);
    ``deep`` makes the data stage decode every frame of every clip; ``resolved``: the recipe
    already loaded from ``recipe_path`` and ``overrides`` (not loaded again)."""
    ctx = Context(recipe_path=str(recipe_path), overrides=overrides, plugins=plugins,
                  gpus=gpus, gpu_memory_gib=gpu_memory_gib, deep=deep, recipe=resolved)
    results: list[StageResult] = []
    for name in stages:
        if name != "recipe" and ctx.recipe is None:
            results.append(StageResult(name, "skipped", summary={"reason": "recipe is invalid"}))
            continue
        start = time.perf_counter()
        problems, summary = STAGES[name](ctx)
        status = "failed" if problems else "ok"
        results.append(StageResult(name, status, time.perf_counter() - start, problems, summary))
    return Report(recipe=str(recipe_path), stages=results, resolved=ctx.recipe)
