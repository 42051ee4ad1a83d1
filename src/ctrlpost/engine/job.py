"""What :mod:`ctrlpost.engine.build` composes from a recipe, as typed objects.

A *plan* is what is known before any rank exists: where the job runs and writes, and how a rank
builds the rest (``plan.build(runtime)``, after it joined the process group). A *job* is what
that gives: everything one rank's loop needs. The launcher, the worker and `verify --fidelity`
receive these, never the recipe.

Light at import (no torch): the launcher holds a plan before it starts any rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctrlpost.recipe import CheckpointSection, LoggingSection, WeightsSection

if TYPE_CHECKING:
    import torch

    from ctrlpost.diffusion import EDMConfig, UncertaintyHead
    from ctrlpost.engine.checkpoint import TrainingState
    from ctrlpost.engine.ema import PowerEMA
    from ctrlpost.engine.generate import ClipInputs, GenerationConfig
    from ctrlpost.engine.runtime import Runtime
    from ctrlpost.engine.scoring import Scorer
    from ctrlpost.engine.trainer import LoopConfig
    from ctrlpost.engine.validation import Validator
    from ctrlpost.models import ControlledDiT, Flavor
    from ctrlpost.models.tokenizer import VideoTokenizer


@dataclass
class ModelParts:
    """The networks of a run, materialised on the rank's device."""

    flavor: Flavor
    model: ControlledDiT
    logvar: UncertaintyHead
    compute_dtype: torch.dtype


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """What a run records of its recipe: ``recipe.toml`` and each export's sidecar."""

    recipe_name: str  # the file name the user gave, e.g. edge_hdvila.toml
    recipe_toml: str  # the resolved recipe
    ema_s: float
    flavor: str

    def sidecar(self, versions: Mapping[str, str]) -> dict[str, Any]:
        """The export's ``iter_{N}.json`` record, less what the checkpoint adds (iteration)."""
        return {"recipe_name": self.recipe_name, "recipe": self.recipe_toml,
                "versions": dict(versions), "ema_s": self.ema_s, "flavor": self.flavor}


@dataclass(frozen=True, kw_only=True)
class TrainingPlan:
    """A training job before any rank exists."""

    name: str  # job.name
    backend: str  # parallel.backend
    run_dir: Path
    record: RunRecord
    synthetic: bool  # random weights and latents (benchmarks)
    resolved_recipe: str  # the validated recipe (JSON) that ranks in other processes load
    build: Callable[[Runtime], TrainingJob] = field(repr=False)  # once in the process group


@dataclass(kw_only=True)
class TrainingJob:
    """Everything one rank's loop needs, built on its device."""

    parts: ModelParts
    optimizer: torch.optim.Optimizer
    ema: PowerEMA
    tokenizer: VideoTokenizer | None  # None with synthetic latents
    validator: Validator | None  # None when validation is off, and with synthetic latents
    batches: Callable[[TrainingState], Iterator[dict[str, Any]]]  # from the resumed position
    loop: LoopConfig
    edm: EDMConfig
    checkpoint: CheckpointSection
    logging: LoggingSection
    validation_note: str  # how validation runs, for the start line; "" without


@dataclass(frozen=True, kw_only=True)
class FidelityPlan:
    """`verify --fidelity` before the model is built."""

    backend: str
    weights: WeightsSection  # where control checkpoints given by name are looked up
    clips_root: str | None  # --clips, else the recipe's validation clips
    out_dir: Path  # where the strips go
    settings: dict[str, Any]  # how clips are generated, for the report
    build: Callable[[Runtime], FidelityJob] = field(repr=False)


@dataclass(kw_only=True)
class FidelityJob:
    """The base model (no branch loaded yet), the clips, and how they are generated and
    scored."""

    parts: ModelParts
    tokenizer: VideoTokenizer
    clips: list[ClipInputs]
    scorer: Scorer
    generation: GenerationConfig
    strip_frames: int
    seed: int  # of the clips' references
