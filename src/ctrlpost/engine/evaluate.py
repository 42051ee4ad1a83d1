"""`ctrlpost verify RECIPE --fidelity`: score control checkpoints on a folder of clips.

The same generation and metric as validation during training (:mod:`.generate`,
:mod:`.scoring`), run in this process on one device for each checkpoint given: a released
``*_control.pt``, an exported ``iter_*_{reg,ema}_model.pt`` (same ``net.*`` layout), or
``none`` (the base alone: what a zero-initialised branch gives). Every checkpoint sees the same
clips, hints and noise, so the numbers compare the branches and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctrlpost.errors import DataError, WeightsError
from ctrlpost.recipe import Recipe

if TYPE_CHECKING:
    import torch

    from ctrlpost.engine.build import ModelParts, Runtime
    from ctrlpost.engine.generate import ClipInputs, GenerationConfig
    from ctrlpost.engine.scoring import Scorer
    from ctrlpost.models.tokenizer import VideoTokenizer

NO_CONTROL = "none"
FIDELITY_DIR = "fidelity"


@dataclass(frozen=True)
class CheckpointScores:
    """One checkpoint's scores: per clip and their mean."""

    label: str
    path: str | None
    per_clip: dict[str, dict[str, float]]
    mean: dict[str, float]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "path": self.path, "mean": self.mean,
                "clips": self.per_clip, "seconds": round(self.seconds, 2)}


@dataclass(frozen=True)
class FidelityReport:
    """Every checkpoint's scores on the same clips, with each clip's floor and ceiling
    (``references``, see :mod:`ctrlpost.engine.scoring`)."""

    headline: str | None
    clips: list[str]
    references: dict[str, dict[str, float]]
    checkpoints: list[CheckpointScores]
    out_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.headline, "clips": self.clips,
                "references": self.references,
                "checkpoints": [c.to_json() for c in self.checkpoints],
                "strips": str(self.out_dir), "settings": self.settings}


def resolve_controls(recipe: Recipe, controls: Sequence[str]) -> list[tuple[str, Path | None]]:
    """``(label, path)`` per requested checkpoint: ``none`` has no path; a path is taken as
    given, else under ``weights.dir``. Default: ``weights.control`` (else ``none``)."""
    requested = list(controls) or [recipe.weights.control or NO_CONTROL]
    resolved: list[tuple[str, Path | None]] = []
    missing: list[str] = []
    for text in requested:
        if text == NO_CONTROL:
            resolved.append((NO_CONTROL, None))
            continue
        path = Path(text)
        if not path.is_file():
            path = Path(recipe.weights.dir) / text
        if not path.is_file():
            missing.append(text)
            continue
        label = path.name.removesuffix(".pt")
        taken = {name for name, _ in resolved}
        if label in taken:  # e.g. the same iter_* name from two runs: keep strips apart
            label = f"{label}#{len(resolved) + 1}"
        resolved.append((label, path))
    if missing:
        raise WeightsError(f"control checkpoint(s) not found: {', '.join(missing)} (looked as "
                           f"given and under {recipe.weights.dir})",
                           hint="pass a *_control.pt or iter_*_ema_model.pt file, or 'none'")
    return resolved


def evaluate(recipe: Recipe, *, controls: Sequence[str] = (), clips_root: str | None = None,
             out_dir: Path | None = None) -> FidelityReport:
    """Generate and score the validation clips of ``recipe`` (``[validation]`` settings, clips
    from ``clips_root`` or ``validation.root`` or ``data.root``) once per checkpoint."""
    import torch.distributed as dist

    from ctrlpost.engine import build, worker

    resolved = resolve_controls(recipe, controls)
    if clips_root is not None:
        check_clips_folder(clips_root)
    out_dir = out_dir or recipe.run_dir() / FIDELITY_DIR
    without_control = recipe.model_copy(update={
        "weights": recipe.weights.model_copy(update={"control": None})})
    owned = not dist.is_initialized()
    runtime = worker.init_distributed(recipe.parallel.backend) if owned else build.Runtime(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=0,
        device=_current_device())
    try:
        parts = build.build_model(without_control, runtime)
        tokenizer = build.validation_tokenizer(
            build.build_tokenizer(recipe, runtime, parts.compute_dtype),
            build.validation_frames(recipe))
        clips = build.validation_clips(recipe, parts.flavor, root=clips_root)
        scorer = build.scorer(recipe)
        session = _Session(parts, tokenizer, clips, scorer, runtime,
                           build.generation_config(recipe),
                           strip_frames=recipe.validation.strip_frames)
        checkpoints = [session.score_checkpoint(label, path, out_dir / label)
                       for label, path in resolved]
        # Each clip's floor and ceiling depend on the tokenizer only: once, whatever the count
        # of checkpoints, and outside their timings.
        references = {clip.name: scorer.references(clip, tokenizer, seed=recipe.validation.seed)
                      for clip in clips}
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()
    val = recipe.validation
    settings = {"sampler": val.sampler, "steps": val.steps, "guidance": val.guidance,
                "condition_frames": val.condition_frames, "seed": val.seed,
                "num_frames": build.validation_frames(recipe),
                "resolution": val.resolution or recipe.data.resolution}
    return FidelityReport(headline=scorer.headline, clips=[c.name for c in clips],
                          references=references, checkpoints=checkpoints,
                          out_dir=out_dir, settings=settings)


def check_clips_folder(root: str) -> None:
    """Fail before any weights load when ``--clips`` names a folder without clips."""
    from ctrlpost.data.dataset import list_clips

    if not list_clips(root):
        raise DataError(f"--clips {root}: no videos/*.mp4 there",
                        hint="lay it out like data.root (videos/ and t5_xxl/; make t5_xxl/ "
                        "with `ctrlpost embed RECIPE --set data.root=<folder>`)")


def score_fidelity(recipe_path: str | Path, overrides: Sequence[str], *,
                   controls: Sequence[str] = (), clips: Path | None = None) -> FidelityReport:
    """`verify --fidelity`: load the recipe and :func:`evaluate` it."""
    from ctrlpost.recipe import load

    recipe = load(recipe_path, overrides)
    return evaluate(recipe, controls=controls, clips_root=str(clips) if clips else None)


def _current_device() -> torch.device:
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _Session:
    """One built model scoring several checkpoints on the same clips."""

    def __init__(self, parts: ModelParts, tokenizer: VideoTokenizer, clips: Sequence[ClipInputs],
                 scorer: Scorer, runtime: Runtime, generation: GenerationConfig, *,
                 strip_frames: int) -> None:
        self.parts, self.tokenizer, self.clips, self.scorer = parts, tokenizer, clips, scorer
        self.runtime, self.generation, self.strip_frames = runtime, generation, strip_frames

    def score_checkpoint(self, label: str, path: Path | None, folder: Path) -> CheckpointScores:
        from dataclasses import replace

        from ctrlpost.engine.generate import generate
        from ctrlpost.engine.scoring import mean_scores, strip_label, write_strip

        start = time.perf_counter()
        generation = self.generation
        if path is None:
            generation = replace(generation, control_weight=0.0)  # the base alone
        else:
            self._load(path)
        per_clip: dict[str, dict[str, float]] = {}
        for clip in self.clips:
            frames = generate(self.parts.model, self.tokenizer, clip, cfg=generation,
                              device=self.runtime.device, dtype=self.parts.compute_dtype)
            scores = self.scorer.score(frames, clip)
            per_clip[clip.name] = scores
            if self.runtime.is_main:
                image = self.scorer.strip(frames, clip, frames=self.strip_frames,
                                          label=f"{label}: {strip_label(clip.name, scores)}")
                write_strip(folder / f"{clip.name}.png", image)
        return CheckpointScores(label=label, path=str(path) if path else None, per_clip=per_clip,
                                mean=mean_scores(list(per_clip.values())),
                                seconds=time.perf_counter() - start)

    def _load(self, path: Path) -> None:
        import torch
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
        )

        from ctrlpost.engine.validation import reshard
        from ctrlpost.models import ControlNet, load_control_checkpoint

        with torch.device("meta"):
            layout = ControlNet(self.parts.flavor.control)
        state = load_control_checkpoint(path, layout)
        reshard(self.parts.model)
        options = StateDictOptions(full_state_dict=True, strict=True)
        set_model_state_dict(self.parts.model.control, state, options=options)  # type: ignore[arg-type]
