"""Validation during training: fixed clips sampled with the EMA weights and scored.

Every ``validation.every_steps`` (and before the first step of a fresh run, and after the last),
the EMA averages are copied into the control branch, each validation clip is generated from its
hint (fixed seed per clip, :mod:`ctrlpost.engine.generate`), decoded, scored with the modality's
fidelity metric and drawn as a PNG strip; then the training weights are put back. Nothing of the
training state changes: the trainer's random streams are derived from (seed, step, index) and
the validation draws from its own seeded stream.

All ranks take part (FSDP gathers weights in every forward): clips are dealt round-robin, a rank
with no clip left in the last round generates a throw-away one so that every rank makes the same
number of network calls. Each rank writes its clips' strips; rank 0 writes ``scores.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ctrlpost.data.dataset import BadSampleError, ClipDataset
from ctrlpost.engine.ema import PowerEMA
from ctrlpost.engine.generate import ClipInputs, GenerationConfig, generate
from ctrlpost.engine.scoring import Scorer, mean_scores, strip_label, write_strip
from ctrlpost.errors import DataError
from ctrlpost.files import write_text_atomic
from ctrlpost.models import ControlledDiT
from ctrlpost.models.tokenizer import VideoTokenizer
from ctrlpost.rundir import SCORES, step_name

log = logging.getLogger("ctrlpost.engine")


@dataclass(frozen=True, kw_only=True)
class ValidationConfig:
    """When to validate and what to write.

    Attributes:
        every_steps: Interval in optimizer steps (> 0).
        at_start: Also validate a fresh run at step 0.
        strip_frames: Frames per PNG strip.
        out_dir: ``<run>/validation``; each validation writes ``step_{N:09}/``.
    """

    every_steps: int
    at_start: bool
    strip_frames: int
    out_dir: Path

    def due(self, step: int, *, last_step: int) -> bool:
        """Whether step ``step`` (just completed) is validated."""
        return step % self.every_steps == 0 or step == last_step


def load_clips(dataset: ClipDataset, count: int) -> list[ClipInputs]:
    """The first ``count`` usable clips of ``dataset`` (by name; unusable ones are skipped)."""
    clips: list[ClipInputs] = []
    for index in range(len(dataset)):
        if len(clips) == count:
            break
        try:
            clips.append(ClipInputs.from_sample(dataset.load(index, epoch=0)))
        except BadSampleError as exc:
            log.warning("validation skips %s", exc.message)
    if not clips:
        raise DataError(f"no usable validation clip under {dataset.root}",
                        hint="fix what `ctrlpost verify RECIPE` reports, or set validation.root")
    return clips


def fsdp_modules(model: nn.Module) -> Iterator[Any]:
    """Every FSDP-sharded submodule of ``model`` (itself included)."""
    from torch.distributed.fsdp import FSDPModule

    return (m for m in model.modules() if isinstance(m, FSDPModule))


def reshard(model: nn.Module) -> None:
    """Drop gathered weights so the next forward gathers the current shards again.

    Roots and last blocks keep their gathered weights after a forward (no backward follows in
    validation): weights changed in place meanwhile would otherwise go unseen.
    """
    for module in fsdp_modules(model):
        module.reshard()


@contextlib.contextmanager
def ema_weights(model: ControlledDiT, ema: PowerEMA) -> Iterator[None]:
    """Run the body with the EMA averages in the control branch's weights, then restore them.

    Shard-local copies on every rank (no communication); the model is resharded on the way in
    and out so no forward sees stale gathered weights.
    """
    reshard(model)
    with torch.no_grad():
        saved = {name: param.detach().clone() for name, param in ema.params.items()}
        for name, param in ema.params.items():
            param.copy_(ema.averages[name])
    try:
        yield
    finally:
        reshard(model)
        with torch.no_grad():
            for name, param in ema.params.items():
                param.copy_(saved[name])


class Validator:
    """Validates the model at given steps; see the module docstring."""

    def __init__(self, *, cfg: ValidationConfig, generation: GenerationConfig,
                 model: ControlledDiT, ema: PowerEMA, tokenizer: VideoTokenizer,
                 clips: Sequence[ClipInputs], scorer: Scorer, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.cfg, self.generation = cfg, generation
        self.model, self.ema, self.tokenizer = model, ema, tokenizer
        self.clips, self.scorer = list(clips), scorer
        self.device, self.dtype = device, dtype
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self._references: dict[int, dict[str, float]] = {}

    def run(self, step: int, *, should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """Validate now (collective); returns the record to log (the same on every rank):
        ``{"fidelity": {...}, "validation_s", "validation_clips"}``, or ``{}`` when a stop
        request (agreed by ``should_stop``, a collective) cut it short."""
        start = time.perf_counter()
        folder = self.cfg.out_dir / step_name(step)
        local: list[dict[str, Any]] = []
        stopped = False
        with ema_weights(self.model, self.ema):
            rounds = math.ceil(len(self.clips) / self.world)
            for round_index in range(rounds):
                position = round_index * self.world + self.rank
                clip = self.clips[position % len(self.clips)]
                frames = generate(self.model, self.tokenizer, clip, cfg=self.generation,
                                  device=self.device, dtype=self.dtype)
                if position < len(self.clips):
                    local.append(self._finish(clip, frames, folder))
                if round_index + 1 < rounds and should_stop():
                    stopped = True
                    break
        if stopped:
            return {}
        gathered: list[list[dict[str, Any]] | None] = [None] * self.world
        dist.all_gather_object(gathered, local)
        results = sorted((r for part in gathered for r in part or []), key=lambda r: r["index"])
        record = {"fidelity": mean_scores([r["scores"] for r in results]),
                  "validation_s": time.perf_counter() - start,
                  "validation_clips": len(results)}
        if not record["fidelity"]:
            del record["fidelity"]
        if self.rank == 0:
            _write_scores(folder / SCORES, step, record, results)
        return record

    def _finish(self, clip: ClipInputs, frames: Any, folder: Path) -> dict[str, Any]:
        """Score one generated clip (with its floor and ceiling) and write its strip."""
        scores = self.scorer.score(frames, clip)
        if clip.index not in self._references:
            self._references[clip.index] = self.scorer.references(
                clip, self.tokenizer, seed=self.generation.seed)
        scores.update(self._references[clip.index])
        image = self.scorer.strip(frames, clip, frames=self.cfg.strip_frames,
                                  label=strip_label(clip.name, scores))
        write_strip(folder / f"{clip.name}.png", image)
        return {"index": clip.index, "name": clip.name, "scores": scores}


def _write_scores(path: Path, step: int, record: dict[str, Any],
                  results: list[dict[str, Any]]) -> None:
    document = {"step": step, **record, "clips": results}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")
