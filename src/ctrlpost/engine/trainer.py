"""The training loop: micro-steps, clipping, skipping non-finite steps, EMA, saves, signals.

Randomness is a pure function of (seed, step, global micro-batch index): the EDM noise and text
dropout of micro-batch ``k`` on rank ``r`` of ``W`` come from a generator seeded with
``(seed, step, k·W + r)``, and hints from ``(seed, epoch, clip)``. So a resumed run redraws
exactly what the uninterrupted run drew, 2 ranks × 1 clip equal 1 rank × 2 accumulated clips,
and no RNG state has to be carried in checkpoints.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from ctrlpost.diffusion import EDMConfig, apply_text_dropout, training_loss, x0_from_latent
from ctrlpost.engine import checkpoint
from ctrlpost.engine.checkpoint import TrainingState
from ctrlpost.engine.ema import PowerEMA
from ctrlpost.engine.optim import lr_factor, set_lr
from ctrlpost.engine.seeding import seeded_generator
from ctrlpost.errors import LaunchError
from ctrlpost.models import ControlledDiT
from ctrlpost.models.tokenizer import VideoTokenizer


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """The loop's knobs, from ``[train]``, ``[optim]``, ``[checkpoint]`` and ``[logging]``."""

    steps: int
    grad_accum_steps: int
    lr: float
    warmup_steps: int
    warmup_start_factor: float
    grad_clip_norm: float
    max_nonfinite_steps: int
    save_every_steps: int
    keep_last: int
    export_released: bool
    log_every_steps: int
    seed: int
    control_weight: float


@dataclass
class Batch:
    """One micro-batch on the device, ready for the model."""

    x0_B_C_T_H_W: torch.Tensor
    hint_B_C_T_H_W: torch.Tensor
    text_B_L_D: torch.Tensor
    padding_mask_B_1_H_W: torch.Tensor
    fps_B: torch.Tensor


@dataclass
class StepMetrics:
    """What one optimizer step reports."""

    step: int
    loss: float
    lr: float
    grad_norm: float
    skipped: bool
    seconds: float
    data_wait_s: float
    samples: int
    tokens: int
    extra: dict[str, float] = field(default_factory=dict)


class StopFlag:
    """Set by SIGTERM/SIGINT; checked (and agreed on by all ranks) between steps."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None  # the first stop signal received
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        if self.signum is None:
            self.signum = signum


def micro_generator(seed: int, step: int, index: int, device: torch.device) -> torch.Generator:
    """The generator of global micro-batch ``index`` of optimizer step ``step``."""
    return seeded_generator([seed, step, index], device)


def to_batch(raw: Mapping[str, Any], *, tokenizer: VideoTokenizer | None, device: torch.device,
             dtype: torch.dtype, sigma_data: float) -> Batch:
    """Move a loader batch to the device and encode video and hint (no gradients)."""
    if "x0" in raw:  # synthetic latents: already in model space
        return Batch(raw["x0"], raw["hint"], raw["t5"], raw["padding_mask"], raw["fps"])
    assert tokenizer is not None
    with torch.no_grad():
        video = raw["video"].to(device, non_blocking=True).to(dtype) / 127.5 - 1.0
        hint = raw["hint"].to(device, non_blocking=True).to(dtype) / 127.5 - 1.0
        x0 = x0_from_latent(tokenizer.encode(video), sigma_data=sigma_data)
        hint_x0 = x0_from_latent(tokenizer.encode(hint), sigma_data=sigma_data)
    fps = torch.as_tensor(raw["fps"], dtype=torch.float32, device=device).reshape(-1)
    return Batch(x0, hint_x0, raw["t5"].to(device, dtype), raw["padding_mask"].to(device, dtype),
                 fps)


class Trainer:
    """Runs optimizer steps until ``cfg.steps``, a stop signal, or a limit."""

    def __init__(self, *, cfg: LoopConfig, edm: EDMConfig, model: ControlledDiT,
                 logvar: torch.nn.Module, tokenizer: VideoTokenizer | None,
                 optimizer: torch.optim.Optimizer, ema: PowerEMA, batches: Any,
                 state: TrainingState, device: torch.device, compute_dtype: torch.dtype,
                 checkpoints: Any, sidecar: Callable[[], dict[str, Any]],
                 on_metrics: Callable[[StepMetrics], None], validator: Any = None,
                 on_validation: Callable[[int, dict[str, Any]], None] | None = None,
                 on_saved: Callable[[int], None] | None = None) -> None:
        """``validator`` (an :class:`ctrlpost.engine.validation.Validator`, optional) samples
        and scores clips at its steps; ``on_validation(step, record)`` receives its results;
        ``on_saved(step)`` hears of each committed checkpoint."""
        self.cfg, self.edm = cfg, edm
        self.model, self.logvar, self.tokenizer = model, logvar, tokenizer
        self.optimizer, self.ema, self.batches = optimizer, ema, batches
        self.state, self.device, self.dtype = state, device, compute_dtype
        self.checkpoints, self.sidecar, self.on_metrics = checkpoints, sidecar, on_metrics
        self.validator, self.on_validation, self.on_saved = validator, on_validation, on_saved
        self.params = [p for p in model.control.parameters() if p.requires_grad]
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.stop = StopFlag()
        self._iterator: Iterator[Mapping[str, Any]] = iter(batches)
        self._saved_step = -1

    def run(self) -> TrainingState:
        """Train; save every N steps, at the end and on SIGTERM/SIGINT. Returns the final state."""
        self.stop.install()
        try:
            if self.validator is not None and self.state.step == 0 and self.validator.cfg.at_start:
                self.validate()
            while self.state.step < self.cfg.steps:
                metrics = self.train_step()
                self.on_metrics(metrics)
                stop = self._agree(self.stop.requested)
                if not stop and self.validator is not None and self.validator.cfg.due(
                        self.state.step, last_step=self.cfg.steps):
                    # Before the save: a run killed meanwhile resumes from an earlier
                    # checkpoint and validates this step again, so no point of the curve is lost.
                    stop = self.validate()
                if self.state.step % self.cfg.save_every_steps == 0 or stop:
                    self.save()
                if stop:
                    break
            if self._saved_step != self.state.step:
                self.save()
        finally:
            self.stop.uninstall()
        return self.state

    def validate(self) -> bool:
        """Validate at the current step (collective); returns whether a stop was requested."""
        record = self.validator.run(self.state.step,
                                    should_stop=lambda: self._agree(self.stop.requested))
        if record and self.on_validation is not None:
            self.on_validation(self.state.step, record)
        return self._agree(self.stop.requested)

    def train_step(self) -> StepMetrics:
        """One optimizer step over ``grad_accum_steps`` micro-batches."""
        start = time.perf_counter()
        step, accum = self.state.step, self.cfg.grad_accum_steps
        lr = self.cfg.lr * lr_factor(step, warmup_steps=self.cfg.warmup_steps,
                                     start_factor=self.cfg.warmup_start_factor)
        set_lr(self.optimizer, lr)
        loss_sum = torch.zeros((), device=self.device)
        wait = 0.0
        samples = tokens = 0
        for micro in range(accum):
            fetched = time.perf_counter()
            raw = next(self._iterator)
            batch = to_batch(raw, tokenizer=self.tokenizer, device=self.device, dtype=self.dtype,
                             sigma_data=self.edm.sigma_data)
            wait += time.perf_counter() - fetched
            generator = micro_generator(self.cfg.seed, step, micro * self.world + self.rank,
                                        self.device)
            loss = self._micro_loss(batch, generator) / accum
            loss.backward()
            loss_sum += loss.detach()
            B, _, T, H, W = batch.x0_B_C_T_H_W.shape
            samples += B
            tokens += B * T * (H // 2) * (W // 2)
        grad_norm = self._clip()
        loss_mean, finite = self._reduce_loss(loss_sum, grad_norm)
        skipped = not finite
        if skipped:
            self.state.nonfinite_steps += 1
            if self.state.nonfinite_steps > self.cfg.max_nonfinite_steps:
                raise LaunchError(
                    f"{self.state.nonfinite_steps} steps with a non-finite loss or gradient, more "
                    f"than train.max_nonfinite_steps={self.cfg.max_nonfinite_steps} (last: step "
                    f"{step})", hint="lower optim.lr or check the data with `ctrlpost verify`")
        else:
            self.optimizer.step()
            self._check_finite(step + 1, lr=lr, grad_norm=grad_norm)
            self.ema.update(step)
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.data = self._data_position()
        return StepMetrics(step=self.state.step, loss=loss_mean, lr=lr, grad_norm=grad_norm,
                           skipped=skipped, seconds=time.perf_counter() - start, data_wait_s=wait,
                           samples=samples * self.world, tokens=tokens * self.world)

    def _micro_loss(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        text = apply_text_dropout(batch.text_B_L_D, rate=self.edm.text_dropout,
                                  generator=generator)

        def denoiser(net_in: torch.Tensor, c_noise_B: torch.Tensor,
                     mask_B_1_T_H_W: torch.Tensor) -> torch.Tensor:
            return self.model(net_in, c_noise_B, text, hint_B_C_T_H_W=batch.hint_B_C_T_H_W,
                              condition_mask_B_1_T_H_W=mask_B_1_T_H_W,
                              padding_mask_B_1_H_W=batch.padding_mask_B_1_H_W, fps_B=batch.fps_B,
                              control_weight=self.cfg.control_weight)

        out = training_loss(denoiser, batch.x0_B_C_T_H_W, cfg=self.edm, uncertainty=self.logvar,
                            generator=generator, input_dtype=self.dtype)
        return out.loss

    def _check_finite(self, step: int, *, lr: float, grad_norm: float) -> None:
        """End the run if the update of ``step`` made a trainable weight NaN or inf.

        Skipping later steps cannot repair such weights, and every checkpoint and export after
        them would carry them. The cost is one fused read of this rank's shards per step.
        """
        if not checkpoint.all_finite(self.params, device=self.device):
            raise LaunchError(
                f"weights became non-finite at step {step} (lr {lr:g}, gradient norm "
                f"{grad_norm:.4g} before clipping); nothing from this step was saved",
                hint="lower optim.lr (or optim.grad_clip_norm) and run the same command: it "
                "resumes from the last checkpoint")

    def _clip(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip_norm, foreach=True)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        return float(norm)

    def _reduce_loss(self, loss_sum: torch.Tensor, grad_norm: float) -> tuple[float, bool]:
        """Mean loss over ranks, and whether every rank's loss and the gradient are finite."""
        packed = torch.stack([loss_sum.float(),
                              torch.tensor(0.0 if math.isfinite(loss_sum.item()) else 1.0,
                                           device=loss_sum.device)])
        dist.all_reduce(packed)
        loss = float(packed[0]) / self.world
        return loss, packed[1].item() == 0 and math.isfinite(grad_norm) and math.isfinite(loss)

    def _agree(self, flag: bool) -> bool:
        value = torch.tensor(1.0 if flag else 0.0, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def _data_position(self) -> dict[str, int]:
        """The global data position; ranks that skipped bad samples read ahead, so take the max."""
        state = getattr(self.batches, "state_dict", lambda: {"epoch": 0, "consumed": 0})()
        packed = torch.tensor((int(state["epoch"]) << 32) | int(state["consumed"]),
                              dtype=torch.int64, device=self.device)
        dist.all_reduce(packed, op=dist.ReduceOp.MAX)
        value = int(packed.item())
        return {"epoch": value >> 32, "consumed": value & 0xFFFFFFFF}

    def save(self) -> None:
        """Commit a training checkpoint with its released-layout exports, prune old ones.

        Weights or EMA averages that are not finite are never written: the run ends instead.
        """
        averages = self.ema.state_dict().values()
        if not checkpoint.all_finite([*self.params, *averages], device=self.device):
            raise LaunchError(f"weights or their EMA became non-finite at step "
                              f"{self.state.step}; not saving them",
                              hint="lower optim.lr and run the same command: it resumes from "
                              "the last checkpoint")
        sidecar = self.sidecar()
        checkpoint.save(self.checkpoints, control=self.model.control, optimizer=self.optimizer,
                        ema=self.ema, trainer=self.state,
                        meta={"recipe": sidecar.get("recipe_name", "")},
                        sidecar=sidecar if self.cfg.export_released else None)
        if self.rank == 0:
            checkpoint.prune(self.checkpoints, keep_last=self.cfg.keep_last)
        dist.barrier()
        self._saved_step = self.state.step
        if self.on_saved is not None:
            self.on_saved(self.state.step)
