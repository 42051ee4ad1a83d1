"""Per-GPU memory of a post-training step, from plain numbers (no torch: `verify` runs it).

World size ``W``; FSDP2 shards every parameter, gradient and optimizer state over all ``W`` ranks
(``engine.parallel.apply_fsdp``: one unit per DiT block, the rest of each stack is its root
unit). ``a`` = bytes of the compute dtype (2 bf16, 4 fp32); ``P_b``, ``P_c`` = base, control
parameters; ``P_t`` = trainable (``P_c`` less the control's unused final layer); ``P_blk`` =
one DiT block; ``S`` = parameters outside the blocks of both stacks. Terms (bytes):

* ``base_params`` a·P_b/W; ``control_params`` 4·P_c/W (fp32 master; ``a`` without it);
  ``control_grads`` 4·P_t/W (reduce dtype fp32), counted at every moment although
  ``zero_grad(set_to_none)`` frees them before the activation peak: conservative by that size;
  ``optimizer_state`` 8·P_t/W (AdamW exp_avg, exp_avg_sq); ``ema`` 4·P_t/W (power EMA).
* ``gathered_units`` a·(2·P_blk + S): the all-gathered block in use plus the prefetched next
  one, and both root units (whole, an upper bound).
* ``tokenizer_weights`` 200 MB: assumed. The CV8x8x8 ``encoder.jit`` is 93 MB on the hub and the
  catalog allows 200 MB; cast to bf16 it is no larger than its file. The logvar head
  (128 weights) and the decoder (not loaded for training) are left out.
* Activations, per micro-batch of ``B`` clips of ``L = T_lat·H_tok·W_tok`` tokens each;
  ``D`` width, ``F`` MLP hidden, ``N`` heads, ``M`` text tokens, ``f`` = 4 (fp32 internals).
  Counted from what autograd saves in models/blocks.py (frozen weights save no input for a
  weight gradient), per token:

  - frozen block, ``none``: 3aD (LayerNorm inputs) + 3fD (q, k, q_ca before the fp32 RMSNorm)
    + 6aD (flash q, k, v, out; cross q, out) + aF (GELU input) + 5fN (lse, rsqrt) + 24
    = 19.08·2D for 7b; plus 2aMD per clip (cross k, v);
  - trainable block, ``none``: the frozen set + 3aD (normed) + 3aD (modulated) + 3fD (normed
    q, k for the RMSNorm gain) + aF (GELU output) + 3aD (branch outputs for the gate)
    = 38.08·2D; plus (2a + 2f)MD per clip;
  - ``selective`` (``apply_activation_checkpointing`` keeps the block input and the SDPA
    outputs): aD + 2(aD + fN) = 3.03·2D; ``full``: aD;
  - base block 0 saves nothing (neither its input nor its weights need a gradient);
  - stem: aD (final LayerNorm input) + aD (last control output, zero-block input) + fD
    (control position table, fp32) + 2·2·fd_h (RoPE cos/sin of both stacks) + a(p_in + h_in)
    (patch inputs) + aD + 2a·Σwidths (hint MLP); checkpointed modes also keep both stacks'
    position tables 2aD: 7.66·2D in all for 7b with checkpointing;
  - working set of the backward (peak at the last base block): ``full`` recomputes the
    frozen ``none`` set and holds two F-wide gradients: first principles + 2aF + 2aD
    (incoming and branch gradients) = 29.1·2D, calibrated on the H100 to + 2aF only
    = 27.1·2D; ``selective`` the same less the cached SDPA outputs: 25.05·2D (measured
    25.04); ``none`` peaks at the end of the forward: n_c·aD (control residuals) + aD (base
    embedding) + aF + 3aD (last MLP) = 11·2D (measured 11.0);
  - the control backward (trainable set + 2aF, plus a·P_blk + 4·P_blk unsharded gradients)
    counts instead when it is larger (small bases only).
* ``tokenizer_encode``: the encoder under no_grad before the step, assumed 40 bytes per
  pixel-frame of a clip (bf16 input, 256-channel 3-D convs at 1/4 resolution, cuDNN
  workspace: about 4.1 GiB at 121×704×1280; not measured, no weights on the GPU box). It is
  the peak only when larger than the training activations.
* ``overhead``: 5 % of the allocated peak (reserved/allocated was 1.036-1.046 on the H100 with
  checkpointing) + 0.75 GiB CUDA context and library handles + 0.5 GiB NCCL when W > 1.

Calibration, H100 80GB, torch 2.11 (bench/model_step.py's step: W=1, no FSDP, bf16 trainable
weights and gradients, no optimizer/EMA/tokenizer), 16×88×160 latent: saved activations 16.20
GiB (full) and 42.39 (selective) against 16.18 and 42.37 counted; peaks 43.06 and 68.38 GiB
against 44.6 and 69.9 estimated (+3.6 %, +2.3 %: the gradients, 1.66 GiB, are not yet
allocated at the measured peak); ``none`` at 2 latent frames: 34.57 GiB saved against 34.39.
Saved sets and working sets are linear in L from 4 to 16 latent frames (tests pin the probe's
numbers). The only calibrated constant is the ``full`` working set above.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

GIB = 1024**3
AC_MODES: tuple[str, ...] = ("none", "selective", "full")  # least to most recomputation
TEMPORAL_COMPRESSION = 8
SPATIAL_COMPRESSION = 8
TOKENIZER_WEIGHT_BYTES = 200e6
TOKENIZER_BYTES_PER_PIXEL = 40.0
FRAGMENTATION = 0.05
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
        latent_t = (self.num_frames - 1) // TEMPORAL_COMPRESSION + 1
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
    frozen = 3 * a * d + 3 * f * d + 6 * a * d + a * hidden + 5 * f * n + 24
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
