"""Per-GPU memory of a post-training step, from plain numbers (no torch: `verify` runs it).

World size ``W``; FSDP2 shards every parameter, gradient and optimizer state over all ``W`` ranks
(``engine.parallel.apply_fsdp``: one unit per DiT block, the rest of each stack is its root
unit). The estimate is a sum of terms, in bytes:

* sharded state, each divided by ``W``: the frozen base in the compute dtype, the control
  branch's fp32 master weights and gradients (counted throughout, although they are freed
  before the activation peak: conservative), AdamW's two moments and the power EMA;
* ``gathered_units``: the all-gathered block in use and the prefetched next one, plus both root
  units whole (an upper bound);
* ``tokenizer_weights``: assumed (the encoder's file is smaller); the decoder is not loaded;
* activations: what autograd saves per token in each block for the checkpointing mode, counted
  from ``models/blocks.py`` (frozen weights save no input for a weight gradient), plus the
  stem, plus the backward's working set at its peak (the last base block), or the control
  backward's when that is larger (small bases only);
* ``tokenizer_encode``: the encoder's own peak before the step, assumed per pixel-frame; it
  counts only when larger than the training activations;
* ``overhead``: allocator fragmentation, the CUDA context and library handles, and NCCL's
  buffers when ``W > 1``.

Only the ``full`` working set and the fragmentation are calibrated; the per-term derivation and
the check against a measured 7b step on an H100 are in bench/NOTES.md (engine/memory.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

from ctrlpost.tokenizer_geometry import SPATIAL_COMPRESSION, TEMPORAL_COMPRESSION, latent_frames

GIB = 1024**3
AC_MODES: tuple[str, ...] = ("none", "selective", "full")  # least to most recomputation
TOKENIZER_WEIGHT_BYTES = 200e6  # assumed: the catalog's bound for encoder.jit
TOKENIZER_BYTES_PER_PIXEL = 40.0  # assumed: bf16 input, 3-D convs, cuDNN workspace
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


@dataclass(frozen=True, kw_only=True)
class Job:
    """One training step's shape and setup. The defaults are the engine's; the bench's
    configuration is ``fsdp=False, fp32_master=False, optimizer=False, ema=False,
    tokenizer=False``."""

    num_frames: int
    height: int
    width: int
    batch_size: int = 1
    world_size: int = 1
    ac_mode: str = "selective"
    precision: Literal["bf16", "fp32"] = "bf16"
    fsdp: bool = True
    fp32_master: bool = True
    optimizer: bool = True
    ema: bool = True
    tokenizer: bool = True

    def tokens(self, dims: ModelDims) -> int:
        """Tokens per clip: latent frames × latent rows/2 × latent columns/2."""
        latent_t = latent_frames(self.num_frames)
        per_side = SPATIAL_COMPRESSION * dims.patch_spatial
        return (latent_t // dims.patch_temporal) * (self.height // per_side) * (
            self.width // per_side)


@dataclass(frozen=True)
class Estimate:
    """Bytes per term at the peak moment (every term is present, 0 when absent)."""

    terms: dict[str, float]
    moment: str
    tokens: int

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


def _block_bytes(dims: ModelDims, a: int) -> dict[str, float]:
    """Per-token bytes of one block for each saved set, and the per-clip text constants."""
    d, f, n, hidden = dims.model_channels, FP32, dims.num_heads, dims.mlp_hidden
    # LayerNorm inputs; q, k, q_ca before their fp32 RMSNorm; attention q, k, v, out and cross
    # q, out; the GELU input; softmax statistics and rsqrt per head; a few scalars.
    frozen = 3 * a * d + 3 * f * d + 6 * a * d + a * hidden + 5 * f * n + 24
    # + normed and modulated inputs, normed q, k (for the gain's gradient), the GELU output and
    # the three branch outputs (for the gates' gradients).
    trainable = frozen + 9 * a * d + 3 * f * d + a * hidden
    attention_outputs = 2 * (a * d + f * n)
    text = dims.text_tokens * d
    return {"frozen": frozen, "trainable": trainable, "full": a * d,
            "selective": a * d + attention_outputs, "attention_outputs": attention_outputs,
            "text_frozen": 2 * a * text, "text_trainable": (2 * a + 2 * f) * text}


def _stem_bytes(dims: ModelDims, a: int, mode: str) -> float:
    """Per-token bytes saved outside the blocks (embeddings, hint path, final layer)."""
    d = dims.model_channels
    saved = (3 * a * d + FP32 * d + 2 * 2 * FP32 * dims.head_dim
             + a * (dims.patch_in_features + dims.hint_in_features)
             + 2 * a * sum(dims.hint_mlp_widths))
    return saved + (2 * a * d if mode != "none" else 0)


def _activations(dims: ModelDims, job: Job, a: int) -> tuple[float, float, float]:
    """(saved, working) bytes at the base-backward peak, and the control-backward total."""
    blk, mode, b = _block_bytes(dims, a), job.ac_mode, job.batch_size
    tokens, d, hidden = job.tokens(dims) * b, dims.model_channels, dims.mlp_hidden
    grad_blocks = dims.base_blocks - 1  # base block 0 needs no gradient
    stem = _stem_bytes(dims, a, mode) * tokens
    if mode == "none":
        saved = (tokens * (grad_blocks * blk["frozen"] + dims.control_blocks * blk["trainable"])
                 + b * (grad_blocks * blk["text_frozen"]
                        + dims.control_blocks * blk["text_trainable"]) + stem)
        return saved, tokens * ((dims.control_blocks + 4) * a * d + a * hidden), 0.0
    per_block = blk[mode] * tokens
    cached = blk["attention_outputs"] if mode == "selective" else 0.0
    saved = (grad_blocks + dims.control_blocks) * per_block + stem
    # ``full`` recomputes the frozen set and holds two F-wide gradients; the incoming and branch
    # gradients (2aD more) are left out as calibrated on an H100 (bench/NOTES.md).
    working = tokens * (blk["frozen"] + 2 * a * hidden - cached) + b * blk["text_frozen"]
    control = (dims.control_blocks * per_block + stem
               + tokens * (blk["trainable"] + 2 * a * hidden - cached)
               + b * blk["text_trainable"] + (a + FP32) * dims.block_params * job.fsdp)
    return saved, working, control


def estimate(dims: ModelDims, job: Job) -> Estimate:
    """The per-GPU peak of ``job`` and its terms (see the module docstring for each)."""
    if job.ac_mode not in AC_MODES:
        raise ValueError(f"unknown activation checkpointing {job.ac_mode!r}; valid: {AC_MODES}")
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
    saved, working, control = _activations(dims, job, a)
    encode = (TOKENIZER_BYTES_PER_PIXEL * job.num_frames * job.height * job.width
              * job.batch_size if job.tokenizer else 0.0)
    moment = max(("base backward", saved + working), ("control backward", control),
                 ("tokenizer encode", encode), key=lambda item: item[1])[0]
    if moment == "base backward":
        terms.update(activations_saved=saved, activations_working=working)
    elif moment == "control backward":
        terms.update(activations_working=control)
    else:
        terms.update(tokenizer_encode=encode)
    allocated = sum(terms.values())
    nccl = NCCL_BYTES if job.world_size > 1 else 0.0
    terms["overhead"] = FRAGMENTATION * allocated + CONTEXT_BYTES + nccl
    return Estimate(terms=terms, moment=moment, tokens=job.tokens(dims))


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
        """The change as recipe assignments, e.g. ``parallel.activation_checkpointing = "full"``."""
        return " and ".join(_assignment(key, value) for key, value in self.changes)


def _assignment(key: str, value: object) -> str:
    if key == "gpus":
        return f"{value} GPUs (parallel.nnodes × parallel.nproc_per_node = {value})"
    return f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}"


def check(dims: ModelDims, job: Job, *, gpu_memory_gib: float = 80.0,
          margin: float = 0.05) -> Verdict:
    """Estimate ``job`` against ``gpu_memory_gib`` less ``margin``. When it does not fit, search
    in order: more recomputation (selective, then full; kept for what follows), the fewest GPUs
    that fit, the most frames (8k + 1) that fit; the first change that fits is the fix."""
    budget = gpu_memory_gib * (1 - margin)
    current = estimate(dims, job)
    if current.total_gib <= budget:
        return Verdict(current, budget)
    changes: tuple[tuple[str, object], ...] = ()

    def first_fit(key: str, candidates: Iterable[tuple[object, Job]]) -> Verdict | None:
        for value, candidate in candidates:
            found = estimate(dims, candidate)
            if found.total_gib <= budget:
                return Verdict(current, budget, (*changes, (key, value)), found)
        return None

    stronger = AC_MODES[AC_MODES.index(job.ac_mode) + 1:]
    key = "parallel.activation_checkpointing"
    verdict = first_fit(key, ((mode, replace(job, ac_mode=mode)) for mode in stronger))
    if verdict is not None:
        return verdict
    if stronger:
        job, changes = replace(job, ac_mode=AC_MODES[-1]), ((key, AC_MODES[-1]),)
    gpus = range(job.world_size + 1, MAX_GPUS + 1)
    frames = range(job.num_frames - TEMPORAL_COMPRESSION, 0, -TEMPORAL_COMPRESSION)
    verdict = (first_fit("gpus", ((w, replace(job, world_size=w)) for w in gpus))
               or first_fit("data.num_frames", ((n, replace(job, num_frames=n)) for n in frames)))
    return verdict or Verdict(current, budget, changes)
