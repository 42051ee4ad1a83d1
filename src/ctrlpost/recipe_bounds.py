"""Bounds of recipe values, shared by every section of :mod:`ctrlpost.recipe`.

Each limit says what breaks beyond it. Sections use the annotated types (``Seed``, ``Steps``,
``LocalCount``, ``FolderName``, ...); ``check_bounds`` is the recipe-wide rule every section applies
to every value it is given: no float is inf or NaN, no integer passes int64.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from ctrlpost.rundir import STEP_DIGITS

# TOML integers are signed 64-bit (a run writes its resolved recipe back as TOML for other
# readers) and torch.manual_seed stops at 2**64 - 1: no integer of a recipe reaches 2**63.
MAX_INT = 2**63 - 1
# Checkpoint and validation folders are step_<9 digits>; resume matches exactly nine digits.
MAX_STEPS = 10**STEP_DIGITS - 1
# Processes or threads started on one machine: local ranks (one per GPU; no node has more than 16
# GPUs, CPU ranks share its cores), data-loader workers per rank, download threads. Each rank is
# a whole Python process with torch, so a typo like 100000 must not fork that many.
MAX_LOCAL_PROCESSES = 64
# Ranks of a job (nnodes × nproc_per_node): the memory planner searches GPU counts up to this
# (engine.layout.MAX_GPUS).
MAX_WORLD_SIZE = 4096
# fetch-data waits 2**(attempt - 1) s before a retry: 10 retries already wait 17 minutes.
MAX_RETRIES = 10
# Noise levels of the validation sampler: each is one or two model calls per clip.
MAX_SAMPLER_STEPS = 1000
NAME_MAX_BYTES = 255  # a file name's limit on Linux file systems


def at_most(limit: int, why: str) -> AfterValidator:
    """A validator of ``value <= limit`` whose error says ``why`` the limit is there."""

    def check(value: int) -> int:
        if value > limit:
            raise ValueError(f"must be at most {limit}: {why} (got {value})")
        return value

    return AfterValidator(check)


PLANNER = "the memory planner's largest world size"
Seed = Annotated[int, Field(ge=0), at_most(MAX_INT, "seeds are signed 64-bit (torch, TOML)")]
Steps = Annotated[int, at_most(MAX_STEPS, "checkpoint folders are step_ plus 9 digits")]
LocalCount = Annotated[int, at_most(MAX_LOCAL_PROCESSES, "processes or threads of one machine")]
Nodes = Annotated[int, at_most(MAX_WORLD_SIZE, PLANNER)]
Retries = Annotated[int, at_most(MAX_RETRIES, "each retry doubles the wait; 10 wait 17 min")]
SamplerSteps = Annotated[int, at_most(MAX_SAMPLER_STEPS, "1-2 model calls per clip per level")]

# [[control]] entries one run trains: the engine builds one control branch (from control[0]), so
# a second entry would be ignored. Each entry is validated by its plugin (`verify`'s plugins stage).
TRAINABLE_CONTROLS = 1


def trainable_controls(controls: tuple[Any, ...]) -> tuple[Any, ...]:
    """``controls`` when training can take them all, else a one-line error saying why not."""
    if len(controls) > TRAINABLE_CONTROLS:
        raise ValueError(f"{len(controls)} [[control]] entries, but training builds one control "
                         "branch per run: keep one and train each modality in its own recipe")
    return controls


TRAINABLE = AfterValidator(trainable_controls)


def folder_name(value: str) -> str:
    """A plain single path component, so ``<output_root>/<project>/<group>/<name>`` stays
    inside the output root."""
    parts = [p.lstrip(".") for p in re.split(r"[/\\]+", value.replace("\0", ""))]
    fixed = "_".join(p for p in parts if p)
    if fixed != value:
        example = f"; e.g. {fixed!r}" if fixed else ""
        raise ValueError("must be one folder name (no '/', '\\' or NUL, not starting with '.') "
                         f"so the run folder stays inside the output root (got {value!r})"
                         f"{example}")
    if len(value.encode()) > NAME_MAX_BYTES:
        raise ValueError(f"must be at most {NAME_MAX_BYTES} bytes, a file name's limit "
                         f"(got {len(value.encode())})")
    return value


FolderName = Annotated[str, Field(min_length=1), AfterValidator(folder_name)]


class OutOfBounds(ValueError):
    """A value that breaks the recipe-wide rule; ``where`` is its path inside the checked value
    (``""``, or e.g. ``.x.a[1]`` inside a free-form table), appended to the key's dotted path."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where


def check_bounds(value: Any, where: str = "") -> None:
    """Raise :class:`OutOfBounds` for the first non-finite float or integer past int64 anywhere in
    ``value``, including free-form tables (a control's ``params``) that no typed field checks."""
    if isinstance(value, float) and not math.isfinite(value):
        raise OutOfBounds(where, f"must be a finite number (got {value!r})")
    if isinstance(value, int) and not -MAX_INT - 1 <= value <= MAX_INT:
        raise OutOfBounds(where, f"must fit a signed 64-bit integer, below 2**63 (got {value})")
    if isinstance(value, dict):
        for key, item in value.items():
            check_bounds(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_bounds(item, f"{where}[{i}]")
