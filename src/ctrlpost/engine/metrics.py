"""What rank 0 reports: a rich progress bar (or one line per logged step when the output is
not a terminal, e.g. under the elastic launcher), ``metrics.jsonl`` and TensorBoard."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ctrlpost.engine.trainer import StepMetrics
from ctrlpost.files import write_text_atomic
from ctrlpost.rundir import RunDir


def truncate_metrics(run_dir: Path, *, after_step: int) -> None:
    """Drop records past ``after_step`` (left by a run killed after its last checkpoint), so a
    resumed run's log reads as one uninterrupted run."""
    path = RunDir(run_dir).metrics
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= after_step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


class RunLogger:
    """Rank 0's metrics sink; other ranks get a logger that records nothing."""

    def __init__(self, run_dir: Path, *, enabled: bool, total_steps: int, every_steps: int,
                 jsonl: bool, tensorboard: bool, device: torch.device) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        paths = RunDir(run_dir)
        self.total_steps = total_steps
        self.every_steps = every_steps
        self.device = device
        self.started = time.perf_counter()
        self._jsonl = paths.metrics.open("a", encoding="utf-8") if enabled and jsonl else None
        self._tb: Any = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(paths.tensorboard))
        self._window: list[StepMetrics] = []
        self._progress: Any = None
        if enabled and sys.stdout.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("step {task.completed}/{task.total}"),
                                      BarColumn(), TimeRemainingColumn(),
                                      TextColumn("{task.description}"))
            self._task = self._progress.add_task("", total=total_steps)
            self._progress.start()

    def __call__(self, metrics: StepMetrics) -> None:
        if not self.enabled:
            return
        self._window.append(metrics)
        if metrics.step % self.every_steps and metrics.step != self.total_steps:
            return
        record = self._record(self._window)
        self._window = []
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self._tb.add_scalar(f"train/{key}", value, record["step"])
            self._tb.flush()
        if self._progress is not None:
            self._progress.update(self._task, completed=record["step"],
                                  description=self._line(record).split("  ", 1)[1])
        else:
            print(self._line(record), flush=True)

    def _record(self, window: list[StepMetrics]) -> dict[str, Any]:
        last = window[-1]
        seconds = sum(m.seconds for m in window)
        record: dict[str, Any] = {
            "step": last.step,
            "loss": sum(m.loss for m in window) / len(window),
            "lr": last.lr,
            "grad_norm": last.grad_norm,
            "skipped_steps": sum(m.skipped for m in window),
            "step_s": seconds / len(window),
            "samples_per_s": sum(m.samples for m in window) / seconds,
            "tokens_per_s": sum(m.tokens for m in window) / seconds,
            "data_wait_pct": 100.0 * sum(m.data_wait_s for m in window) / seconds,
            "elapsed_s": time.perf_counter() - self.started,
        }
        if self.device.type == "cuda":
            record["gpu_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        for metrics in window:
            record.update(metrics.extra)
        return record

    def _line(self, r: dict[str, Any]) -> str:
        width = len(str(self.total_steps))
        line = (f"step {r['step']:>{width}}/{self.total_steps}  loss {r['loss']:.4f}  "
                f"lr {r['lr']:.3g}  grad {r['grad_norm']:.3g}  {r['samples_per_s']:.2f} samples/s  "
                f"{r['tokens_per_s']:.0f} tok/s  data-wait {r['data_wait_pct']:.1f}%")
        if "gpu_mem_gib" in r:
            line += f"  mem {r['gpu_mem_gib']:.1f} GiB"
        if r["skipped_steps"]:
            line += f"  skipped {r['skipped_steps']}"
        return line

    def validation(self, step: int, record: Mapping[str, Any]) -> None:
        """Log a validation: its own ``metrics.jsonl`` record (``step``, ``fidelity``,
        ``validation_s``, ``validation_clips``), ``val/*`` TensorBoard scalars and a console line
        that gives its cost."""
        if not self.enabled:
            return
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, **record}) + "\n")
            self._jsonl.flush()
        fidelity = record.get("fidelity", {})
        if self._tb is not None:
            for key, value in fidelity.items():
                self._tb.add_scalar(f"val/{key}", value, step)
            self._tb.add_scalar("val/seconds", record["validation_s"], step)
            self._add_strips(step)
            self._tb.flush()
        scores = ", ".join(f"{key} {value:.3g}" for key, value in fidelity.items())
        self.note(f"validation at step {step}: {scores or 'no fidelity metric'}; "
                  f"{record['validation_clips']} clip(s) in {record['validation_s']:.1f} s")

    def _add_strips(self, step: int) -> None:
        """The step's PNG strips as TensorBoard images (``val_strips/<clip>``): every rank has
        written its strips before the validation record reaches rank 0."""
        import cv2

        folder = RunDir(self.run_dir).validation_step(step)
        for path in sorted(folder.glob("*.png")):
            image_H_W_C = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image_H_W_C is not None:
                self._tb.add_image(f"val_strips/{path.stem}", image_H_W_C[..., ::-1].copy(),
                                   step, dataformats="HWC")

    def note(self, message: str) -> None:
        """A one-off line from rank 0 (start, resume, save)."""
        if self._progress is not None:
            self._progress.console.print(message)
        elif self.enabled:
            print(message, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
