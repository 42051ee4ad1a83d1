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
from ctrlpost.recipe import WeightsSection

if TYPE_CHECKING:
    from ctrlpost.engine.generate import ClipInputs, GenerationConfig
    from ctrlpost.engine.job import FidelityPlan, ModelParts
    from ctrlpost.engine.runtime import Runtime
    from ctrlpost.engine.scoring import Scorer
    from ctrlpost.models.tokenizer import VideoTokenizer

NO_CONTROL = "none"


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


def resolve_controls(weights: WeightsSection,
                     controls: Sequence[str]) -> list[tuple[str, Path | None]]:
    """``(label, path)`` per requested checkpoint: ``none`` has no path; a path is taken as
    given, else under ``weights.dir``. Default: ``weights.control`` (else ``none``)."""
    requested = list(controls) or [weights.control or NO_CONTROL]
    resolved: list[tuple[str, Path | None]] = []
    missing: list[str] = []
    for text in requested:
        if text == NO_CONTROL:
            resolved.append((NO_CONTROL, None))
            continue
        path = Path(text)
        if not path.is_file():
            path = Path(weights.dir) / text
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
                           f"given and under {weights.dir})",
                           hint="pass a *_control.pt or iter_*_ema_model.pt file, or 'none'")
    return resolved


def evaluate(plan: FidelityPlan, *, controls: Sequence[str] = (),
             out_dir: Path | None = None) -> FidelityReport:
    """Generate and score the validation clips of ``plan`` once per checkpoint."""
    import torch.distributed as dist

    from ctrlpost.engine.runtime import current_runtime, init_distributed

    resolved = resolve_controls(plan.weights, controls)
    if plan.clips_root is not None:
        check_clips_folder(plan.clips_root)
    out_dir = out_dir or plan.out_dir
    owned = not dist.is_initialized()
    runtime = init_distributed(plan.backend) if owned else current_runtime()
    try:
        job = plan.build(runtime)
        session = _Session(job.parts, job.tokenizer, job.clips, job.scorer, runtime,
                           job.generation, strip_frames=job.strip_frames)
        checkpoints = [session.score_checkpoint(label, path, out_dir / label)
                       for label, path in resolved]
        # Each clip's floor and ceiling depend on the tokenizer only: once, whatever the count
        # of checkpoints, and outside their timings.
        references = {clip.name: job.scorer.references(clip, job.tokenizer, seed=job.seed)
                      for clip in job.clips}
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()
    return FidelityReport(headline=job.scorer.headline, clips=[c.name for c in job.clips],
                          references=references, checkpoints=checkpoints,
                          out_dir=out_dir, settings=dict(plan.settings))


def check_clips_folder(root: str) -> None:
    """Fail before any weights load when ``--clips`` names a folder without clips."""
    from ctrlpost.data.layout import DatasetLayout

    if not DatasetLayout(Path(root)).clips():
        raise DataError(f"--clips {root}: no videos/*.mp4 there",
                        hint="lay it out like data.root (videos/ and t5_xxl/; make t5_xxl/ "
                        "with `ctrlpost embed RECIPE --set data.root=<folder>`)")


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
