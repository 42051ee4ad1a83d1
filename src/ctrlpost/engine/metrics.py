"""What rank 0 reports: console events, ``metrics.jsonl`` and TensorBoard.

The console gets events (:data:`ConsoleEvent`), not text: a :data:`Console` decides how they
look. `ctrlpost train` passes its view (a live bar on a terminal, else plain lines); without one,
:func:`plain_console` prints a line per logged step and every note. A rank in a process of its
own, started by the elastic launcher, cannot call the command's view: it writes each event as
one line of a small protocol on its stdout (:class:`EventWriter`), which the launcher follows
and decodes (:func:`decode_event`) for the view.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from ctrlpost.engine.trainer import StepMetrics
from ctrlpost.errors import CtrlpostError
from ctrlpost.files import write_text_atomic
from ctrlpost.recipe import MISSING_TENSORBOARD
from ctrlpost.rundir import RunDir, step_name


def truncate_metrics(run_dir: Path, *, after_step: int) -> None:
    """Drop records past ``after_step`` (left by a run killed after its last checkpoint), so a
    resumed run's log reads as one uninterrupted run."""
    path = RunDir(run_dir).metrics
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= after_step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


@dataclass(frozen=True)
class Started:
    """Training starts (or resumes) at ``step`` of ``total``."""

    step: int
    total: int


@dataclass(frozen=True)
class StepDone:
    """An optimizer step finished (every step); ``record`` is the step's ``metrics.jsonl``
    record when it is a logging step, else None."""

    step: int
    total: int
    loss: float
    samples_per_s: float
    record: dict[str, Any] | None = None


@dataclass(frozen=True)
class Note:
    """A one-off line: start, resume, a warning, validation, a checkpoint saved, done."""

    message: str


@dataclass(frozen=True)
class Output:
    """A line rank 0 wrote itself (a library's message, a Python warning), passed on as is."""

    text: str
    err: bool = False


ConsoleEvent = Started | StepDone | Note | Output
Console = Callable[[ConsoleEvent], None]

#: Set by the launcher in its ranks' environment: write console events as protocol lines.
EVENTS_ENV = "CTRLPOST_CONSOLE_EVENTS"
#: Starts a protocol line; anything else on the rank's stdout is its own output.
EVENT_MARK = "@ctrlpost-event "
_EVENT_TYPES: dict[str, type[ConsoleEvent]] = {
    cls.__name__: cls for cls in (Started, StepDone, Note, Output)}


def record_line(record: Mapping[str, Any], total_steps: int) -> str:
    """The text of a logged step: ``step  5/40  loss 0.1234  lr ...``."""
    width = len(str(total_steps))
    line = (f"step {record['step']:>{width}}/{total_steps}  loss {record['loss']:.4f}  "
            f"lr {record['lr']:.3g}  grad {record['grad_norm']:.3g}  "
            f"{record['samples_per_s']:.2f} samples/s  {record['tokens_per_s']:.0f} tok/s  "
            f"data-wait {record['data_wait_pct']:.1f}%")
    if "gpu_mem_gib" in record:
        line += f"  mem {record['gpu_mem_gib']:.1f} GiB"
    if record["skipped_steps"]:
        line += f"  skipped {record['skipped_steps']}"
    return line


def plain_console(event: ConsoleEvent) -> None:
    """Lines for a pipe or a log file: one per logged step, every note and output line."""
    if isinstance(event, StepDone) and event.record is not None:
        print(record_line(event.record, event.total), flush=True)
    elif isinstance(event, Note):
        print(event.message, flush=True)
    elif isinstance(event, Output):
        print(event.text, file=sys.stderr if event.err else sys.stdout, flush=True)


def encode_event(event: ConsoleEvent) -> str:
    """One protocol line (no newline): the mark, then the event as JSON."""
    return EVENT_MARK + json.dumps({"event": type(event).__name__,
                                    **dataclasses.asdict(event)})


def decode_event(line: str, *, err: bool = False) -> ConsoleEvent:
    """The event of a protocol line; any other line (or a damaged one) is :class:`Output`."""
    if not err and line.startswith(EVENT_MARK):
        try:
            fields = json.loads(line[len(EVENT_MARK):])
            return _EVENT_TYPES[fields.pop("event")](**fields)
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # not an event after all: shown as the rank wrote it
    return Output(line, err=err)


class EventWriter:
    """The console of a rank the elastic launcher started: protocol lines on its stdout."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, event: ConsoleEvent) -> None:
        self._stream.write(encode_event(event) + "\n")
        self._stream.flush()  # the launcher follows the file as it grows


def console_from_environment() -> Console:
    """Protocol lines in a rank our launcher started (:data:`EVENTS_ENV`), else plain lines."""
    return EventWriter(sys.stdout) if os.environ.get(EVENTS_ENV) == "1" else plain_console


class RunLogger:
    """Rank 0's metrics sink; other ranks get a logger that records nothing."""

    def __init__(self, run_dir: Path, *, enabled: bool, total_steps: int, every_steps: int,
                 jsonl: bool, tensorboard: bool, device: torch.device,
                 console: Console = plain_console) -> None:
        self.enabled = enabled
        self.console = console
        self.run_dir = run_dir
        paths = RunDir(run_dir)
        self.total_steps = total_steps
        self.every_steps = every_steps
        self.device = device
        self.started = time.perf_counter()
        self._tb: Any = None
        if enabled and tensorboard:  # first: without the extra, nothing is written
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # `verify`/`train` report it first (preflight.extras_problems)
                raise CtrlpostError(f"logging.tensorboard = true {MISSING_TENSORBOARD}") from None
            self._tb = SummaryWriter(log_dir=str(paths.tensorboard))
        self._jsonl = paths.metrics.open("a", encoding="utf-8") if enabled and jsonl else None
        self._window: list[StepMetrics] = []

    def begin(self, step: int) -> None:
        """Training starts at ``step`` (past 0 on a resume)."""
        if self.enabled:
            self.console(Started(step, self.total_steps))

    def __call__(self, metrics: StepMetrics) -> None:
        if not self.enabled:
            return
        self._window.append(metrics)
        logged = self._log(metrics.step)
        self.console(StepDone(metrics.step, self.total_steps, metrics.loss,
                              metrics.samples / metrics.seconds if metrics.seconds else 0.0,
                              record=logged))

    def _log(self, step: int) -> dict[str, Any] | None:
        """At a logging step, the record of the steps since the last one, written; else None."""
        if step % self.every_steps and step != self.total_steps:
            return None
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
        return record

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

    def saved(self, step: int) -> None:
        """A checkpoint of ``step`` was committed."""
        self.note(f"checkpoint saved at step {step}: "
                  f"{RunDir(self.run_dir).checkpoints / step_name(step)}")

    def note(self, message: str) -> None:
        """A one-off line from rank 0 (start, resume, a warning, save, done)."""
        if self.enabled:
            self.console(Note(message))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
