"""Per-GPU memory of a post-training step, from plain numbers (no torch: `verify` runs it).

World size ``W``; FSDP2 shards every parameter, gradient and optimizer state over all ``W`` ranks
(``engine.parallel.apply_fsdp``: one unit per DiT block, the rest of each stack is its root
unit). The estimate is a sum of terms, in bytes:

* sharded state, each divided by ``W``: the frozen base in the compute dtype, the control
  branch's fp32 master weights, AdamW's two moments and the power EMA; the branch's gradients
  only at the control backward's peak (the step's last backward makes them, the optimizer step
  frees them: none exist during the encodes or the base's backward);
* ``gathered_units``: the all-gathered block in use and the prefetched next one, plus both root
  units whole (an upper bound);
* ``tokenizer_weights``: assumed (the encoder's file is smaller); the decoder is not loaded;
* activations: what autograd saves per token in each block for its checkpointing mode, counted
  from ``models/blocks.py`` (frozen weights save no input for a weight gradient), plus the
  stem, plus the backward's working set at its peak (the last base block), or the control
  backward's when that is larger (short clips, small bases). What a ``selective`` block keeps
  of its self-attention depends on whether the blocks are compiled (``Job.compiled``). Each
  block has its own mode (:class:`CheckpointPlan`): the recipe's
  ``parallel.activation_checkpointing`` picks them through :data:`POLICIES`, ``"auto"`` by
  fitting as many ``selective`` blocks as the budget holds (:func:`planned`);
* ``tokenizer_encode``: the encoder's own peak before the step: a calibrated amount per
  pixel-frame plus the score matrices the released encoder's spatial attention materialises:
  two copies of latent frames × (positions per latent frame)² at once as TorchScript, of a
  slice of the frames when the encoder is compiled (``parallel.compile_tokenizer``: its graph
  replayed, its attention sliced); it counts only when larger than the training activations;
* ``overhead``: allocator fragmentation, the CUDA context and library handles, and NCCL's
  buffers when ``W > 1``.

Calibrated: the ``full`` working set, the fragmentation and what a selective block keeps of its
self-attention (eager and compiled); the per-term derivation and the checks against measured 7b
steps on an H100 are in bench/NOTES.md (engine/memory.py).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from ctrlpost.data.buckets import FAMILIES
from ctrlpost.tokenizer_geometry import (
    COMPILED_ENCODE_SCORE_BUDGET,
    SPATIAL_COMPRESSION,
    TEMPORAL_COMPRESSION,
    latent_frames,
)

if TYPE_CHECKING:
    from ctrlpost.models.args import Flavor
    from ctrlpost.recipe import DataSection, ModelSection, ParallelSection, TrainSection

GIB = 1024**3
# A block's checkpointing modes, least recomputation first.
AC_MODES: tuple[str, ...] = ("none", "selective", "full")
DEFAULT_GPU_MEMORY_GIB = 80.0  # what `verify` assumes, and `train` off CUDA
TOKENIZER_WEIGHT_BYTES = 200e6  # assumed: the catalog's bound for encoder.jit
# The encode's peak besides its attention scores, both calibrated on an H100 at 121×704×1280
# (bench/NOTES.md): TorchScript 12.9 GiB (11.8 of them the scores), the compiled replay
# (parallel.compile_tokenizer, its attention sliced) 4.7 GiB (3.7 the scores).
TOKENIZER_BYTES_PER_PIXEL = 10.3
TOKENIZER_COMPILED_BYTES_PER_PIXEL = 9.5
TOKENIZER_SCORE_COPIES = 2  # the scores and their scaled copy, then that copy and the softmax
FRAGMENTATION = 0.05  # reserved over allocated, calibrated on an H100 (bench/NOTES.md)
CONTEXT_BYTES = 0.75 * GIB
NCCL_BYTES = 0.5 * GIB
MAX_GPUS = 4096
FP32 = 4


@dataclass(frozen=True, kw_only=True)
class ModelDims:
    """The architecture numbers of a flavor (``models.args``), as plain integers."""

    model_channels: int
    num_heads: int
    mlp_hidden: int
    text_dim: int
    text_tokens: int
    adaln_lora_dim: int
    base_blocks: int
    control_blocks: int
    patch_in_features: int
    hint_in_features: int
    out_features: int
    pos_table_rows: int
    hint_mlp_widths: tuple[int, ...]
    patch_spatial: int = 2
    patch_temporal: int = 1

    @property
    def head_dim(self) -> int:
        """Channels per head."""
        return self.model_channels // self.num_heads

    @property
    def block_params(self) -> int:
        """Self-attention, cross-attention, MLP, three AdaLN-LoRA and the q/k norm gains."""
        d, c = self.model_channels, self.text_dim
        attn = 4 * d * d + (2 * d * d + 2 * c * d) + 4 * self.head_dim
        return attn + 2 * d * self.mlp_hidden + 3 * 4 * d * self.adaln_lora_dim

    @property
    def final_layer_params(self) -> int:
        """Output projection and its AdaLN-LoRA (shift, scale)."""
        return self.model_channels * (self.out_features + 3 * self.adaln_lora_dim)

    @property
    def trunk_stem_params(self) -> int:
        """Patch embedding, position tables, timestep MLP, final layer, ``affline_norm``."""
        d = self.model_channels
        return (d * (self.patch_in_features + self.pos_table_rows + 4 * d + 1)
                + self.final_layer_params)

    @property
    def hint_params(self) -> int:
        """Hint patch embedding, hint MLP (with biases) and zero blocks (with biases)."""
        d = self.model_channels
        sizes = (d, *self.hint_mlp_widths, d)
        mlp = sum(i * o + o for i, o in itertools.pairwise(sizes))
        return d * self.hint_in_features + mlp + self.control_blocks * (d * d + d)

    @property
    def base_params(self) -> int:
        """Parameters of the frozen base (7,236,208,640 for 7b)."""
        return self.base_blocks * self.block_params + self.trunk_stem_params

    @property
    def control_params(self) -> int:
        """Parameters of the control branch (893,497,120 for 7b "block3")."""
        return (self.control_blocks * self.block_params + self.trunk_stem_params
                + self.hint_params)

    @property
    def trainable_params(self) -> int:
        """Control parameters that get gradients (its final layer is never used)."""
        return self.control_params - self.final_layer_params


def model_dims(flavor: Flavor) -> ModelDims:
    """The planner's numbers of a ``models.args`` flavor (with its control-block count)."""
    base, control = flavor.base, flavor.control
    return ModelDims(
        model_channels=base.model_channels, num_heads=base.num_heads, mlp_hidden=base.mlp_hidden,
        text_dim=base.text_dim, text_tokens=base.text_tokens, adaln_lora_dim=base.adaln_lora_dim,
        base_blocks=base.num_blocks, control_blocks=control.num_blocks,
        patch_in_features=base.patch_in_features, hint_in_features=control.hint_in_features,
        out_features=base.patch_volume * base.out_channels,
        pos_table_rows=sum(base.max_tokens_thw), hint_mlp_widths=control.hint_mlp_widths,
        patch_spatial=base.patch_spatial, patch_temporal=base.patch_temporal)


@dataclass(frozen=True, kw_only=True)
class Job:
    """One training step's shape and setup. The defaults are the engine's; the bench's
    configuration is ``fsdp=False, fp32_master=False, optimizer=False, ema=False,
    tokenizer=False``. ``ac_mode`` is a :data:`POLICIES` name; with ``"auto"``,
    ``selective_blocks`` is how many blocks (in :func:`selective_order`) keep their
    self-attention outputs, the rest being fully recomputed: None until :func:`planned`."""

    num_frames: int
    height: int
    width: int
    batch_size: int = 1
    world_size: int = 1
    ac_mode: str = "selective"
    selective_blocks: int | None = None
    precision: Literal["bf16", "fp32"] = "bf16"
    fsdp: bool = True
    fp32_master: bool = True
    optimizer: bool = True
    ema: bool = True
    tokenizer: bool = True
    #: Bytes per element a selective base block keeps of its self-attention output (the base
    #: precision's ``attention_output_bytes``); None: the compute dtype's.
    base_attention_output_bytes: int | None = None
    compiled: bool = True
    tokenizer_compiled: bool = False

    def tokens(self, dims: ModelDims) -> int:
        """Tokens per clip: latent frames × latent rows/2 × latent columns/2."""
        latent_t = latent_frames(self.num_frames)
        per_side = SPATIAL_COMPRESSION * dims.patch_spatial
        return (latent_t // dims.patch_temporal) * (self.height // per_side) * (
            self.width // per_side)


def largest_bucket(resolution: str) -> tuple[int, int]:
    """(width, height) of the family's largest bucket: the memory of its worst clip."""
    return max(FAMILIES[resolution].values(), key=lambda wh: wh[0] * wh[1])


def _attention_output_bytes(base_precision: str) -> int | None:
    from ctrlpost.modalities import registry

    return registry.get_base_precision(base_precision).attention_output_bytes


def training_job(data: DataSection, train: TrainSection, model: ModelSection,
                 parallel: ParallelSection, *, world_size: int) -> Job:
    """The step a recipe's sections describe, sized for its largest bucket, on ``world_size``
    GPUs (what `verify`'s layout row checks and what `train` plans ``"auto"`` for)."""
    width, height = largest_bucket(data.resolution)
    return Job(num_frames=data.num_frames, height=height, width=width,
               batch_size=train.batch_size, world_size=world_size,
               ac_mode=parallel.activation_checkpointing, precision=model.precision,
               base_attention_output_bytes=_attention_output_bytes(model.base_precision),
               compiled=parallel.compile, tokenizer_compiled=parallel.compile_tokenizer)


@dataclass(frozen=True)
class CheckpointPlan:
    """Each DiT block's activation checkpointing, per stack in forward order: ``"none"``
    (everything autograd saves is kept), ``"selective"`` (the block input and its self-attention
    outputs) or ``"full"`` (the block input only). ``"none"`` is all or nothing."""

    base: tuple[str, ...]
    control: tuple[str, ...]

    def __post_init__(self) -> None:
        modes = set(self.base) | set(self.control)
        if not modes <= set(AC_MODES):
            raise ValueError(f"unknown block modes {sorted(modes - set(AC_MODES))}; "
                             f"valid: {', '.join(AC_MODES)}")
        if "none" in modes and len(modes) > 1:
            raise ValueError("a plan checkpoints every block or none")

    @property
    def stacks(self) -> dict[str, tuple[str, ...]]:
        """Modes by the ``ControlledDiT`` child that holds the blocks."""
        return {"base": self.base, "control": self.control}

    @property
    def checkpointed(self) -> bool:
        """Whether the blocks' activations are recomputed at all."""
        return "none" not in self.base

    def count(self, mode: str) -> int:
        """Blocks with ``mode``, both stacks."""
        return (*self.base, *self.control).count(mode)

    def describe(self) -> str:
        """E.g. ``selective on 13 of 31 blocks (base 15-27), full on 18 (base 0-14, control
        0-2)``, or ``full on all 31 blocks``."""
        total = len(self.base) + len(self.control)
        if not self.checkpointed:
            return f"every activation kept ({total} blocks)"
        modes = [mode for mode in AC_MODES if self.count(mode)]
        if len(modes) == 1:
            return f"{modes[0]} on all {total} blocks"
        parts = []
        for index, mode in enumerate(modes):
            where = ", ".join(
                f"{stack} {_ranges([i for i, m in enumerate(stack_modes) if m == mode])}"
                for stack, stack_modes in self.stacks.items() if mode in stack_modes)
            of = f" of {total} blocks" if index == 0 else ""
            parts.append(f"{mode} on {self.count(mode)}{of} ({where})")
        return ", ".join(parts)


def _ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2, 5``."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)


def selective_order(dims: ModelDims) -> list[tuple[str, int]]:
    """The blocks in the order ``"auto"`` makes them selective. The last base block comes
    first: the peak is its backward, where its self-attention outputs are held either way
    (saved, or recomputed into the working set), so keeping them costs nothing. Then the other
    base blocks, the control blocks, and base block 0 last: no gradient flows through it, it
    runs without checkpointing whatever its mode (``engine.parallel``)."""
    base = [("base", i) for i in range(dims.base_blocks - 1, 0, -1)]
    control = [("control", i) for i in range(dims.control_blocks - 1, -1, -1)]
    return [*base, *control, ("base", 0)]


def _uniform(mode: str) -> Callable[[ModelDims, Job], CheckpointPlan]:
    def every_block(dims: ModelDims, job: Job) -> CheckpointPlan:
        return CheckpointPlan((mode,) * dims.base_blocks, (mode,) * dims.control_blocks)

    return every_block


def _first_selective(dims: ModelDims, job: Job) -> CheckpointPlan:
    total = dims.base_blocks + dims.control_blocks
    if job.selective_blocks is None:
        raise ValueError('"auto" checkpointing needs a memory budget: plan the job with '
                         "planned() or check() first")
    if not 0 <= job.selective_blocks <= total:
        raise ValueError(f"selective_blocks must be in [0, {total}], got {job.selective_blocks}")
    chosen = set(selective_order(dims)[:job.selective_blocks])

    def modes(stack: str, count: int) -> tuple[str, ...]:
        return tuple("selective" if (stack, i) in chosen else "full" for i in range(count))

    return CheckpointPlan(modes("base", dims.base_blocks), modes("control", dims.control_blocks))


def _as_is(dims: ModelDims, job: Job, budget_gib: float) -> Job:
    return job


def _most_selective_that_fit(dims: ModelDims, job: Job, budget_gib: float) -> Job:
    """The most blocks selective (a prefix of :func:`selective_order`) whose total fits
    ``budget_gib``; all full when even that does not fit. The total never falls as a block
    turns selective, so the first that does not fit ends the search, and a larger budget never
    gets fewer selective blocks."""
    best = replace(job, selective_blocks=0)
    for count in range(1, dims.base_blocks + dims.control_blocks + 1):
        candidate = replace(job, selective_blocks=count)
        if estimate(dims, candidate).total_gib > budget_gib:
            break
        best = candidate
    return best


@dataclass(frozen=True)
class Policy:
    """A ``parallel.activation_checkpointing`` value: each block's mode for a planned job, how
    a job is planned for a budget (GiB), and the values `verify` may suggest instead when the
    job does not fit, least recomputation first."""

    blocks: Callable[[ModelDims, Job], CheckpointPlan]
    plan: Callable[[ModelDims, Job, float], Job]
    stronger: tuple[str, ...]


# "auto" replaces "full" among the suggestions: it is full checkpointing where nothing else fits
# and keeps every self-attention output the budget allows, at no change of the numbers.
POLICIES: dict[str, Policy] = {
    "none": Policy(_uniform("none"), _as_is, ("selective", "auto")),
    "selective": Policy(_uniform("selective"), _as_is, ("auto",)),
    "full": Policy(_uniform("full"), _as_is, ()),
    "auto": Policy(_first_selective, _most_selective_that_fit, ()),
}


def policy(name: str) -> Policy:
    """The :data:`POLICIES` entry ``name``, or a ValueError naming the valid ones."""
    found = POLICIES.get(name)
    if found is None:
        raise ValueError(f"unknown activation checkpointing {name!r}; valid: "
                         f"{', '.join(POLICIES)}")
    return found


def block_plan(dims: ModelDims, job: Job) -> CheckpointPlan:
    """Each block's mode for ``job`` (an ``"auto"`` job must be :func:`planned` first)."""
    return policy(job.ac_mode).blocks(dims, job)


def planned(dims: ModelDims, job: Job, *, gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
            margin: float = 0.05) -> Job:
    """``job`` with its checkpointing planned for ``gpu_memory_gib`` less ``margin`` (only
    ``"auto"`` depends on it)."""
    return policy(job.ac_mode).plan(dims, job, gpu_memory_gib * (1 - margin))


@dataclass(frozen=True)
class Estimate:
    """Bytes per term at the peak moment (every term is present, 0 when absent), and the
    checkpointing they were counted for."""

    terms: dict[str, float]
    moment: str
    tokens: int
    plan: CheckpointPlan

    @property
    def peak_allocated_gib(self) -> float:
        """What ``torch.cuda.max_memory_allocated`` should report."""
        return sum(v for k, v in self.terms.items() if k != "overhead") / GIB

    @property
    def total_gib(self) -> float:
        """What the GPU must hold, allocator and library overhead included."""
        return sum(self.terms.values()) / GIB

    def breakdown_gib(self) -> dict[str, float]:
        """The terms in GiB, rounded to 0.01."""
        return {k: round(v / GIB, 2) for k, v in self.terms.items()}


def _block_bytes(dims: ModelDims, a: int, *, compiled: bool,
                 attention_output_bytes: int | None = None) -> dict[str, float]:
    """Per-token bytes of one block for each saved set, and the per-clip text constants
    (``compiled``: blocks under torch.compile; ``attention_output_bytes``: what a base
    precision keeps of a self-attention output per element, when not the compute dtype)."""
    d, f, n, hidden = dims.model_channels, FP32, dims.num_heads, dims.mlp_hidden
    # LayerNorm inputs; q, k, q_ca before their fp32 RMSNorm; attention q, k, v, out and cross
    # q, out; the GELU input; softmax statistics and rsqrt per head; a few scalars.
    frozen = 3 * a * d + 3 * f * d + 6 * a * d + a * hidden + 5 * f * n + 24
    # + normed and modulated inputs, normed q, k (for the gain's gradient), the GELU output and
    # the three branch outputs (for the gates' gradients).
    trainable = frozen + 9 * a * d + 3 * f * d + a * hidden
    # What "selective" keeps of a self-attention (bench/NOTES.md):
    if attention_output_bytes is not None:  # e.g. fp8-attention: its e4m3 output and statistics
        attention_outputs = attention_output_bytes * d + f * n  # (q, k, v recomputed)
    elif compiled:  # the output and its log-sum-exp (measured on the engine's step)
        attention_outputs = a * d + f * n
    else:  # eager checkpointing caches two output-sized tensors and the statistics
        attention_outputs = 2 * (a * d + f * n)
    text = dims.text_tokens * d
    return {"frozen": frozen, "trainable": trainable, "full": a * d,
            "selective": a * d + attention_outputs, "attention_outputs": attention_outputs,
            "text_frozen": 2 * a * text, "text_trainable": (2 * a + 2 * f) * text}


def _stem_bytes(dims: ModelDims, a: int, checkpointed: bool) -> float:
    """Per-token bytes saved outside the blocks (embeddings, hint path, final layer)."""
    d = dims.model_channels
    saved = (3 * a * d + FP32 * d + 2 * 2 * FP32 * dims.head_dim
             + a * (dims.patch_in_features + dims.hint_in_features)
             + 2 * a * sum(dims.hint_mlp_widths))
    return saved + (2 * a * d if checkpointed else 0)


def _activations(dims: ModelDims, job: Job, a: int,
                 plan: CheckpointPlan) -> tuple[float, float, float]:
    """(saved, working) bytes at the base-backward peak, and the control-backward total."""
    blk, b = _block_bytes(dims, a, compiled=job.compiled), job.batch_size
    base_blk = _block_bytes(dims, a, compiled=job.compiled,
                            attention_output_bytes=job.base_attention_output_bytes)
    tokens, d, hidden = job.tokens(dims) * b, dims.model_channels, dims.mlp_hidden
    grad_blocks = dims.base_blocks - 1  # base block 0 needs no gradient
    stem = _stem_bytes(dims, a, plan.checkpointed) * tokens
    if not plan.checkpointed:
        saved = (tokens * (grad_blocks * blk["frozen"] + dims.control_blocks * blk["trainable"])
                 + b * (grad_blocks * blk["text_frozen"]
                        + dims.control_blocks * blk["text_trainable"]) + stem)
        return saved, tokens * ((dims.control_blocks + 4) * a * d + a * hidden), 0.0
    def saved_by(modes: Iterable[str], sets: dict[str, float]) -> float:
        counts = Counter(modes)
        return sum(counts[mode] * sets[mode] * tokens for mode in ("selective", "full"))

    def cached(mode: str, sets: dict[str, float]) -> float:
        # A selective block's attention outputs are saved: its backward does not recompute them.
        return sets["attention_outputs"] if mode == "selective" else 0.0

    saved = saved_by(plan.base[1:], base_blk) + saved_by(plan.control, blk) + stem
    # ``full`` recomputes the frozen set and holds two F-wide gradients; the incoming and branch
    # gradients (2aD more) are left out as calibrated on an H100 (bench/NOTES.md). The peak is
    # the last base block's backward, the control backward's its last control block's.
    working = (tokens * (blk["frozen"] + 2 * a * hidden - cached(plan.base[-1], base_blk))
               + b * blk["text_frozen"])
    control = (saved_by(plan.control, blk) + stem
               + tokens * (blk["trainable"] + 2 * a * hidden - cached(plan.control[-1], blk))
               + b * blk["text_trainable"] + (a + FP32) * dims.block_params * job.fsdp)
    return saved, working, control


def estimate(dims: ModelDims, job: Job) -> Estimate:
    """The per-GPU peak of ``job`` and its terms (see the module docstring for each)."""
    plan = block_plan(dims, job)
    a = 2 if job.precision == "bf16" else 4
    shards = job.world_size if job.fsdp else 1
    master = FP32 if job.fp32_master else a
    stems = 2 * dims.trunk_stem_params + dims.hint_params
    terms: dict[str, float] = {
        "base_params": a * dims.base_params / shards,
        "control_params": master * dims.control_params / shards,
        "control_grads": master * dims.trainable_params / shards,
        "optimizer_state": 2 * FP32 * dims.trainable_params / shards if job.optimizer else 0.0,
        "ema": FP32 * dims.trainable_params / shards if job.ema else 0.0,
        "gathered_units": a * (2 * dims.block_params + stems) if job.fsdp else 0.0,
        "tokenizer_weights": TOKENIZER_WEIGHT_BYTES if job.tokenizer else 0.0,
        "activations_saved": 0.0, "activations_working": 0.0, "tokenizer_encode": 0.0,
    }
    saved, working, control = _activations(dims, job, a, plan)
    encode = _tokenizer_encode(job, a) if job.tokenizer else 0.0
    # The control branch's gradients exist from its own backward (the last of the step) until
    # the optimizer step: not during the encodes or the base's backward.
    grads = terms["control_grads"]
    moment = max(("base backward", saved + working), ("control backward", control + grads),
                 ("tokenizer encode", encode), key=lambda item: item[1])[0]
    if moment == "base backward":
        terms.update(activations_saved=saved, activations_working=working, control_grads=0.0)
    elif moment == "control backward":
        terms.update(activations_working=control)
    else:
        terms.update(tokenizer_encode=encode, control_grads=0.0)
    allocated = sum(terms.values())
    nccl = NCCL_BYTES if job.world_size > 1 else 0.0
    terms["overhead"] = FRAGMENTATION * allocated + CONTEXT_BYTES + nccl
    return Estimate(terms=terms, moment=moment, tokens=job.tokens(dims), plan=plan)


def _tokenizer_encode(job: Job, dtype_bytes: int) -> float:
    """The encoder's peak above what the step holds before it (see the module docstring)."""
    pixels = job.num_frames * job.height * job.width * job.batch_size
    positions = (job.height // SPATIAL_COMPRESSION) * (job.width // SPATIAL_COMPRESSION)
    # The spatial attention's score matrices, one per latent frame of each clip: all of them
    # at once as released, a slice of them under the compiled replay.
    matrices = job.batch_size * latent_frames(job.num_frames)
    per_pixel = TOKENIZER_BYTES_PER_PIXEL
    if job.tokenizer_compiled:
        matrices = min(matrices, max(1, COMPILED_ENCODE_SCORE_BUDGET // positions**2))
        per_pixel = TOKENIZER_COMPILED_BYTES_PER_PIXEL
    scores = dtype_bytes * matrices * positions**2
    return per_pixel * pixels + TOKENIZER_SCORE_COPIES * scores


@dataclass(frozen=True)
class Verdict:
    """Whether a job fits a GPU and, if not, the cheapest recipe change that makes it fit."""

    estimate: Estimate
    budget_gib: float
    changes: tuple[tuple[str, object], ...] = ()
    fixed: Estimate | None = None

    @property
    def fits(self) -> bool:
        """Whether the estimated total is within the budget."""
        return self.estimate.total_gib <= self.budget_gib

    def fix(self) -> str:
        """The change as recipe assignments, e.g. ``parallel.activation_checkpointing = "auto"``."""
        return " and ".join(_assignment(key, value) for key, value in self.changes)


def _assignment(key: str, value: object) -> str:
    if key == "gpus":
        return f"{value} GPUs (parallel.nnodes × parallel.nproc_per_node = {value})"
    if isinstance(value, bool):
        return f"{key} = {str(value).lower()}"
    return f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}"


def check(dims: ModelDims, job: Job, *, gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
          margin: float = 0.05) -> Verdict:
    """Estimate ``job``, :func:`planned` for ``gpu_memory_gib`` less ``margin``. When it does
    not fit, search in order: more recomputation (its policy's ``stronger`` values; the last is
    kept for what follows), the tokenizer compiled (kept when it lowers the peak), the
    fewest GPUs that fit, the most frames (8k + 1) that fit; the first change that fits is the
    fix. Every candidate is planned for the budget itself."""
    budget = gpu_memory_gib * (1 - margin)

    def estimated(candidate: Job) -> Estimate:
        return estimate(dims, policy(candidate.ac_mode).plan(dims, candidate, budget))

    current = estimated(job)
    if current.total_gib <= budget:
        return Verdict(current, budget)
    changes: tuple[tuple[str, object], ...] = ()

    def first_fit(key: str, candidates: Iterable[tuple[object, Job]]) -> Verdict | None:
        for value, candidate in candidates:
            found = estimated(candidate)
            if found.total_gib <= budget:
                return Verdict(current, budget, (*changes, (key, value)), found)
        return None

    stronger = policy(job.ac_mode).stronger
    key = "parallel.activation_checkpointing"
    verdict = first_fit(key, ((mode, replace(job, ac_mode=mode)) for mode in stronger))
    if verdict is not None:
        return verdict
    if stronger:
        job, changes = replace(job, ac_mode=stronger[-1]), ((key, stronger[-1]),)
    if job.tokenizer and not job.tokenizer_compiled:
        # The encode's score matrices are a per-GPU floor that no GPU count lowers.
        compiled = replace(job, tokenizer_compiled=True)
        verdict = first_fit("parallel.compile_tokenizer", [(True, compiled)])
        if verdict is not None:
            return verdict
        if estimated(compiled).total_gib < estimated(job).total_gib:
            job, changes = compiled, (*changes, ("parallel.compile_tokenizer", True))
    gpus = range(job.world_size + 1, MAX_GPUS + 1)
    frames = range(job.num_frames - TEMPORAL_COMPRESSION, 0, -TEMPORAL_COMPRESSION)
    verdict = (first_fit("gpus", ((w, replace(job, world_size=w)) for w in gpus))
               or first_fit("data.num_frames", ((n, replace(job, num_frames=n)) for n in frames)))
    return verdict or Verdict(current, budget, changes)
