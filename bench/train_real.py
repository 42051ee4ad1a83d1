"""The engine's real training step on one GPU, with real data and a real-architecture tokenizer,
split into its parts.

``bench/train_recipe.py`` times ``ctrlpost train --synthetic``: random latents, no loader, no
tokenizer. This script times the step a post-training run takes, at the recipe's geometry
(``recipes/edge_hdvila.toml``: 121 frames of 720p → 16 × 88 × 160 latents → 56,320 tokens):

* data: a few 1280×720 clips of 130 frames made by the ``synthetic`` data source
  (``ctrlpost fetch-data --source synthetic``), read by the engine's own loader (decode, bucket
  resize, the edge hint drawn per sample in the workers) with the recipe's workers and prefetch;
* text: random T5 embedding pickles in the reference's format at the flavor's text width,
  written with ``ctrlpost.data.text.write_embedding`` (T5-11B itself is not run);
* tokenizer: diffusers' ``AutoencoderKLCosmos`` at the CV8x8x8 configuration with random
  weights and the released code's attention (materialised scores), traced into
  ``encoder.jit``/``decoder.jit`` (``bench/cosmos_tokenizer.py``) and loaded by the engine
  through ``VideoTokenizer.from_files``;
* model: the recipe's flavor with random weights: the job is ``ctrlpost.engine.build.build_job``
  itself (loader batches, tokenizer, FSDP2, optimizer, EMA), except that its ``build_model`` is
  called with ``random_weights=True``, the path ``train --synthetic`` uses;
* the step: ``Trainer.train_step`` followed by the run logger, as ``Trainer.run`` does (no
  validation, no checkpoint saves, and not its per-step stop-flag all-reduce).

After ``--warmup`` steps (worker start-up, compilation), ``--plain-steps`` steps run as they are
and ``--steps`` more run with timing marks: each mark drains the device
(``torch.cuda.synchronize``) and reads the clock, at the Trainer's phase boundaries, through
bench-only wrappers (the batch iterator, ``VideoTokenizer.encode``, ``Trainer._micro_loss``,
``Trainer._clip``, the optimizer's step hooks, ``PowerEMA.update``); nothing in ``src/`` is
changed. The phases:

  data_next        the loader's ``next()``
  batch_to_device  uint8 → device, scaling, ``x0_from_latent``, text and mask to the device
  encode_video     ``VideoTokenizer.encode`` of the clip
  encode_hint      ``VideoTokenizer.encode`` of the hint
  forward          noise and text-dropout draws, the model's forward, the loss
  backward         ``loss.backward()``
  clip             gradient-norm clipping (reads the norm on the host)
  loss_reduce      loss all-reduce and finiteness (host reads)
  optimizer        ``optimizer.step()``
  finite_check     the weights' finiteness check after the update
  ema              ``PowerEMA.update``
  bookkeeping      ``zero_grad``, the data position all-reduce, the step record
  metrics_log      the run logger (``metrics.jsonl``)

The plain steps' median is the step time; the marked steps give each part's share (the marks
add a few synchronisations: both medians are reported). Peak GPU memory is over the steps
after the warm-up; on the marked steps each encode's own peak is read too (the allocator's peak
is reset around it and folded back). Model FLOPs: ``bench/flops.py``'s
``model_flops(..., part="control")``, divided by the step time and by the same run's bf16
8192³ matmul rate (``_common.matmul_ceiling``, at the start and the end; the higher median).

Usage (on the GPU, from the repository root, ctrlpost and its plugins installed)::

    python bench/train_real.py                       # edge_hdvila, 1 GPU, "full" checkpointing
    python bench/train_real.py --tiny                # tiny model and tokenizer, CPU, ~15 s

Writes ``bench/results/train_real-<recipe>-<device>.json`` (or ``--out``) after every stage.
Needs ``diffusers`` (bench only).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common
import cosmos_tokenizer
from flops import model_flops

common.ensure_ctrlpost_importable()

from ctrlpost.engine.runtime import allocator_defaults  # noqa: E402

allocator_defaults()  # as a rank sets it, before this process's first CUDA allocation

import torch.distributed as dist  # noqa: E402

from ctrlpost import recipe as recipes  # noqa: E402
from ctrlpost.data import text  # noqa: E402
from ctrlpost.data.dataset import list_clips  # noqa: E402
from ctrlpost.engine import build  # noqa: E402
from ctrlpost.engine.checkpoint import TrainingState  # noqa: E402
from ctrlpost.engine.job import TrainingJob  # noqa: E402
from ctrlpost.engine.metrics import RunLogger, plain_console  # noqa: E402
from ctrlpost.engine.runtime import Runtime, init_distributed  # noqa: E402
from ctrlpost.engine.trainer import StepMetrics, Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_NAME = "cosmos-cv8x8x8-random"
"""The tokenizer folder under the scratch ``weights.dir``."""

PHASE_AFTER = {
    "step_start": "bookkeeping", "fetch_start": "data_next", "fetch_end": "batch_to_device",
    "encode_video_start": "encode_video", "encode_video_end": "batch_to_device",
    "encode_hint_start": "encode_hint", "encode_hint_end": "batch_to_device",
    "forward_start": "forward", "forward_end": "backward", "clip_start": "clip",
    "clip_end": "loss_reduce", "optimizer_start": "optimizer", "optimizer_end": "finite_check",
    "ema_start": "ema", "ema_end": "bookkeeping", "step_end": "metrics_log",
}
"""The phase that runs from a mark to the next one, by the name of the first mark."""

PARTS = {
    "data_wait": ("data_next", "batch_to_device"),
    "tokenizer_video": ("encode_video",),
    "tokenizer_hint": ("encode_hint",),
    "model_forward_backward": ("forward", "backward"),
    "clip_optimizer_ema": ("clip", "optimizer", "finite_check", "ema"),
    "metrics": ("loss_reduce", "bookkeeping", "metrics_log"),
}
"""The issue's parts of a step, as sums of phases."""


# ----------------------------------------------------------------------------- data


def fetch_synthetic_clips(recipe_path: str, sets: list[str], clips: int) -> None:
    """``ctrlpost fetch-data RECIPE --source synthetic`` under the bench's overrides."""
    command = [sys.executable, "-m", "ctrlpost", "fetch-data", recipe_path, "--source",
               "synthetic", "--num-videos", str(clips), *(a for s in sets for a in ("--set", s))]
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, text=True, capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"fetch-data failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                         f"{done.stderr[-3000:]}")


def write_random_embeddings(root: Path, *, width: int, seed: int) -> dict[str, Any]:
    """A random T5 embedding pickle per clip (reference format: ``[array(L, width, float16)]``),
    L drawn from 20..120 tokens, values of T5-11B's output scale."""
    rng = np.random.default_rng(seed)
    lengths = []
    for stem in list_clips(root):
        length = int(rng.integers(20, 121))
        lengths.append(length)
        embedding = rng.standard_normal((length, width), dtype=np.float32) * 0.2
        text.write_embedding(text.embedding_path(root, stem), embedding)
    return {"clips": len(lengths), "tokens": lengths, "width": width}


# ----------------------------------------------------------------------------- timing


class Timeline:
    """Marks at the step's phase boundaries: each drains the device and reads the clock.
    Inactive (the plain steps), a mark does nothing."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.active = False
        self.marks: list[tuple[str, float]] = []
        self.encodes_since_fetch = 0
        self.encode_memory: list[dict[str, Any]] = []
        self.model_memory: list[dict[str, Any]] = []
        self._model_before: int | None = None
        # The allocator's peaks are reset around each marked encode (to read the encode's
        # own): what they held before is folded in here, so the run's peaks stay known.
        self._peaks = {"allocated": 0, "reserved": 0}

    def begin(self, *, active: bool) -> None:
        self.active, self.marks = active, []
        self.mark("step_start")

    def mark(self, name: str) -> None:
        if not self.active:
            return
        common.synchronize(self.device)
        self.marks.append((name, time.perf_counter()))

    def encode(self, which: str, encode: Callable[[torch.Tensor], torch.Tensor],
               video: torch.Tensor) -> torch.Tensor:
        """``encode(video)`` between two marks; on CUDA in a marked step, also its memory: what
        was allocated when it started and the peak it reached."""
        self.mark(f"encode_{which}_start")
        before = self._open_window()
        out = encode(video)
        self.mark(f"encode_{which}_end")
        if before is not None:
            self.encode_memory.append({"which": which, **self._close_window(before)})
        return out

    def model_begin(self) -> None:
        """The forward starts (in a marked step on CUDA: read the model's own peak from here)."""
        self.mark("forward_start")
        self._model_before = self._open_window()

    def model_end(self) -> None:
        """Forward and backward are done (clipping starts)."""
        self.mark("clip_start")
        if self._model_before is not None:
            self.model_memory.append({
                **self._close_window(self._model_before),
                "peak_reserved_gib": torch.cuda.max_memory_reserved(self.device) / common.GIB})

    def _open_window(self) -> int | None:
        """In a marked step on CUDA, start reading one phase's own peak (the run's peaks so far
        are folded in first): the bytes allocated now; None when not watching."""
        if not (self.active and self.device.type == "cuda"):
            return None
        self._fold_peaks()
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return before

    def _close_window(self, before: int) -> dict[str, float]:
        return {"allocated_before_gib": before / common.GIB,
                "peak_allocated_gib": torch.cuda.max_memory_allocated(self.device) / common.GIB}

    def _fold_peaks(self) -> None:
        self._peaks["allocated"] = max(self._peaks["allocated"],
                                       torch.cuda.max_memory_allocated(self.device))
        self._peaks["reserved"] = max(self._peaks["reserved"],
                                      torch.cuda.max_memory_reserved(self.device))

    def reset_peaks(self) -> None:
        """Forget the peaks so far (the warm-up's)."""
        common.reset_peak(self.device)
        self._peaks = {"allocated": 0, "reserved": 0}

    def peak_memory(self) -> dict[str, float]:
        """The peaks since :meth:`reset_peaks`, in GiB (CUDA only)."""
        if self.device.type != "cuda":
            return {}
        self._fold_peaks()
        return {f"peak_{kind}_gib": value / common.GIB for kind, value in self._peaks.items()}

    def fetched(self) -> None:
        """A batch came out of the loader: its encodes come next (clip, then hint)."""
        self.encodes_since_fetch = 0
        self.mark("fetch_end")

    def phases(self) -> dict[str, float]:
        """Seconds per phase between the first and the last mark."""
        out: dict[str, float] = {}
        for (name, start), (_, end) in zip(self.marks, self.marks[1:], strict=False):
            phase = PHASE_AFTER.get(name, f"after_{name}")
            out[phase] = out.get(phase, 0.0) + end - start
        return out


class TimedBatches:
    """The job's batches, with a mark before and after each ``next()``; the data position is
    the wrapped stream's (what the Trainer records)."""

    def __init__(self, batches: Any, timeline: Timeline) -> None:
        self.batches, self.timeline = batches, timeline

    def __iter__(self) -> Iterator[Any]:
        source = iter(self.batches)
        while True:
            self.timeline.mark("fetch_start")
            try:
                batch = next(source)
            except StopIteration:
                return
            self.timeline.fetched()
            yield batch

    def state_dict(self) -> dict[str, int]:
        return dict(self.batches.state_dict())


def around(fn: Callable[..., Any], before: Callable[[], None],
           after: Callable[[], None]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        before()
        out = fn(*args, **kwargs)
        after()
        return out

    return wrapped


def instrument(trainer: Trainer, job: TrainingJob, timeline: Timeline) -> None:
    """Marks around the Trainer's phases, from outside (instance attributes and hooks)."""
    for name in ("_micro_loss", "_clip"):
        if not callable(getattr(trainer, name, None)):
            raise SystemExit(f"Trainer.{name} is gone: update bench/train_real.py's marks")
    trainer._micro_loss = around(  # type: ignore[method-assign]
        trainer._micro_loss, timeline.model_begin, lambda: timeline.mark("forward_end"))
    trainer._clip = around(  # type: ignore[method-assign]
        trainer._clip, timeline.model_end, lambda: timeline.mark("clip_end"))
    job.optimizer.register_step_pre_hook(lambda *_: timeline.mark("optimizer_start"))
    job.optimizer.register_step_post_hook(lambda *_: timeline.mark("optimizer_end"))
    job.ema.update = around(  # type: ignore[method-assign]
        job.ema.update, lambda: timeline.mark("ema_start"), lambda: timeline.mark("ema_end"))
    tokenizer = job.tokenizer
    if tokenizer is None:
        raise SystemExit("the job has no tokenizer: it was built for synthetic latents")
    encode = tokenizer.encode

    def timed_encode(video: torch.Tensor) -> torch.Tensor:
        # to_batch encodes the clip first, then its hint.
        which = "video" if timeline.encodes_since_fetch == 0 else "hint"
        timeline.encodes_since_fetch += 1
        return timeline.encode(which, encode, video)

    tokenizer.encode = timed_encode  # type: ignore[method-assign,assignment]


# ----------------------------------------------------------------------------- the job


def build_random_weight_job(recipe: recipes.Recipe, runtime: Runtime) -> TrainingJob:
    """``build_job`` as a real run builds it (loader batches, tokenizer, optimizer, EMA), with
    the model's weights drawn as ``train --synthetic`` draws them instead of loaded."""
    load = build.build_model

    def random_model(recipe: recipes.Recipe, runtime: Runtime, *,
                     random_weights: bool = False) -> Any:
        # build_job passes random_weights=synthetic (False here): draw them all the same.
        return load(recipe, runtime, random_weights=True)

    with mock.patch.object(build, "build_model", random_model):
        return build.build_job(recipe, runtime)


def step_record(metrics: StepMetrics, wall: float, phases: dict[str, float] | None
                ) -> dict[str, Any]:
    record: dict[str, Any] = {
        "step": metrics.step, "wall_s": wall, "trainer_seconds": metrics.seconds,
        "data_wait_s": metrics.data_wait_s, "loss": metrics.loss, "grad_norm": metrics.grad_norm,
        "skipped": metrics.skipped, "samples": metrics.samples, "tokens": metrics.tokens}
    if phases is not None:
        record["phases"] = phases
    return record


def shares(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Per phase and per part: median seconds and share of the marked steps' total time."""
    if not steps:
        return {}
    names = sorted({name for s in steps for name in s["phases"]})
    total = sum(sum(s["phases"].values()) for s in steps)
    phases = {name: {"median_s": statistics.median(s["phases"].get(name, 0.0) for s in steps),
                     "share": sum(s["phases"].get(name, 0.0) for s in steps) / total}
              for name in names}
    parts = {}
    for part, members in PARTS.items():
        per_step = [sum(s["phases"].get(m, 0.0) for m in members) for s in steps]
        parts[part] = {"median_s": statistics.median(per_step), "share": sum(per_step) / total}
    covered = {m for members in PARTS.values() for m in members}
    other = [n for n in names if n not in covered]
    if other:  # a mark this script does not know: keep its time visible, never drop it
        per_step = [sum(s["phases"].get(m, 0.0) for m in other) for s in steps]
        parts["other"] = {"median_s": statistics.median(per_step), "share": sum(per_step) / total,
                          "phases": other}
    return {"phases": phases, "parts": parts,
            "median_marked_step_s": statistics.median(sum(s["phases"].values()) for s in steps)}


# ----------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", default=None,
                        help="default: recipes/edge_hdvila.toml (--tiny: recipes/edge_tiny.toml)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny flavor and tokenizer, small clips, on the CPU (smoke test)")
    parser.add_argument("--clips", type=int, default=None,
                        help="synthetic clips to make (default 4; --tiny 2)")
    parser.add_argument("--warmup", type=int, default=None, help="default 2; --tiny 1")
    parser.add_argument("--plain-steps", type=int, default=None, help="default 3; --tiny 1")
    parser.add_argument("--steps", type=int, default=None,
                        help="marked steps (default 4; --tiny 2)")
    parser.add_argument("--ac", default="full",
                        help="parallel.activation_checkpointing, any value the recipe accepts "
                        "(default 'full': what one 80 GB GPU was measured to fit)")
    parser.add_argument("--selective-blocks", type=int, default=None,
                        help="with --ac auto: this many blocks selective instead of the "
                        "planner's count (to measure a plan before the planner makes it)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="more recipe overrides, after the bench's own")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="an existing folder from bench/cosmos_tokenizer.py (else made here)")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="working folder (default: a new temporary one, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--memory-history", action="store_true",
                        help="record where CUDA memory is allocated; on running out of memory, "
                             "and after the warm-up, write the live tensors by origin")
    parser.add_argument("--profile", action="store_true",
                        help="one more step, not timed, under torch's profiler: its GPU kernels "
                        "by kind (convolution, attention, products, compiled elementwise, ...)")
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    recipe_path = args.recipe or str(REPO / "recipes" / ("edge_tiny.toml" if args.tiny
                                                         else "edge_hdvila.toml"))
    small = args.tiny
    clips = args.clips or (2 if small else 4)
    warmup = args.warmup if args.warmup is not None else (1 if small else 2)
    plain = args.plain_steps if args.plain_steps is not None else (1 if small else 3)
    marked = args.steps if args.steps is not None else (2 if small else 4)
    device = torch.device("cuda" if torch.cuda.is_available() and not small else "cpu")
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="ctrlpost-train-real-"))
    scratch.mkdir(parents=True, exist_ok=True)
    weights = scratch / "weights"
    tokenizer_dir = args.tokenizer or weights / TOKENIZER_NAME
    sets = [
        "data.source='synthetic'", f"data.root='{scratch / 'data'}'",
        f"data.synthetic.num_clips={clips}",
        f"weights.dir='{tokenizer_dir.parent}'", f"weights.tokenizer='{tokenizer_dir.name}'",
        "parallel.nproc_per_node=1", "parallel.nnodes=1",
        f"parallel.activation_checkpointing='{args.ac}'",
        f"train.steps={warmup + plain + marked + args.profile}", "logging.every_steps=1",
        "logging.tensorboard=false", "validation.every_steps=0", "checkpoint.resume='never'",
        f"job.output_root='{scratch / 'runs'}'",
        *(["parallel.backend='gloo'"] if device.type == "cpu" else []),
        *args.overrides,
    ]
    recipe = recipes.load(recipe_path, sets)
    slug = common.slug(common.device_name(device).split(" (")[0])
    out = args.out or common.RESULTS / f"train_real-{Path(recipe_path).stem}-{slug}.json"
    result: dict[str, Any] = {
        "benchmark": "train_real", "recipe": recipe_path, "overrides": sets,
        "device": common.device_name(device), "torch": torch.__version__, "date": common.now(),
        "command": " ".join(sys.argv), "stage": "start", "ceiling": [],
    }

    def save(stage: str) -> None:
        result["stage"] = stage
        common.write_json(result, out)

    if args.selective_blocks is not None:
        if args.ac != "auto":
            raise SystemExit("--selective-blocks goes with --ac auto")
        result["selective_blocks_forced"] = args.selective_blocks
        planned = build.memory.planned
        build.memory.planned = lambda dims, job, **kw: dataclasses.replace(  # type: ignore[assignment]
            planned(dims, job, **kw), selective_blocks=args.selective_blocks)

    try:
        result["ceiling"].append(common.matmul_ceiling(device))
        save("ceiling")
        start = time.perf_counter()
        fetch_synthetic_clips(recipe_path, sets, clips)
        result["data"] = {"fetch_s": time.perf_counter() - start,
                          "synthetic": recipe.data.synthetic.model_dump(),
                          "num_frames": recipe.data.num_frames,
                          "resolution": recipe.data.resolution,
                          "num_workers": recipe.data.num_workers,
                          "prefetch_factor": recipe.data.prefetch_factor}
        flavor = build.flavor_of(recipe)
        result["data"]["embeddings"] = write_random_embeddings(
            Path(recipe.data.root), width=flavor.base.text_dim, seed=recipe.job.seed)
        save("data")
        precision = torch.bfloat16 if recipe.model.precision == "bf16" else torch.float32
        if args.tokenizer is None:
            result["tokenizer"] = cosmos_tokenizer.write_tokenizer(
                tokenizer_dir, tiny=small, device=device, dtype=precision, seed=recipe.job.seed)
            # The traced graph against diffusers' eager encode, at another clip shape.
            check = cosmos_tokenizer.check_tokenizer(
                tokenizer_dir, tiny=small, device=device, dtype=precision, seed=recipe.job.seed)
            result["tokenizer_check"] = check
            if not check["finite"]:  # NaN latents would skip every optimizer step
                raise SystemExit(f"{tokenizer_dir}: the random tokenizer's latents are not "
                                 "finite")
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the eager copy is gone: leave the GPU to the job
            save("tokenizer")
        run(recipe, result, device=device, warmup=warmup, plain=plain, marked=marked, save=save,
            memory_history=args.memory_history, profile=args.profile)
        save("done")
    except BaseException:
        result["error"] = traceback.format_exc()
        save("failed")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        if not args.keep and args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print_summary(result)
    print(f"wrote {out}")


def run(recipe: recipes.Recipe, result: dict[str, Any], *, device: torch.device, warmup: int,
        plain: int, marked: int, save: Callable[[str], None],
        memory_history: bool = False, profile: bool = False) -> None:
    """Build the job, run the steps, fill ``result`` (``profile``: and one more step's kernels
    by kind, after the timed ones, so the profiler's overhead is in none of them)."""
    runtime = init_distributed(recipe.parallel.backend)
    start = time.perf_counter()
    job = build_random_weight_job(recipe, runtime)
    common.synchronize(device)
    result["build_s"] = time.perf_counter() - start
    parts = job.parts
    run_dir = recipe.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    state = TrainingState()
    logger = RunLogger(run_dir, enabled=runtime.is_main, total_steps=job.loop.steps,
                       every_steps=job.logging.every_steps, jsonl=job.logging.jsonl,
                       tensorboard=False, device=runtime.device, console=plain_console)
    timeline = Timeline(device)
    trainer = Trainer(
        cfg=job.loop, edm=job.edm, model=parts.model, logvar=parts.logvar,
        tokenizer=job.tokenizer, optimizer=job.optimizer, ema=job.ema,
        batches=TimedBatches(job.batches(state), timeline), state=state, device=runtime.device,
        compute_dtype=parts.compute_dtype, checkpoints=run_dir / "checkpoints",
        sidecar=dict, on_metrics=logger)
    instrument(trainer, job, timeline)
    channels, frames, height, width = build.latent_shape(recipe, parts.flavor)
    patch = parts.flavor.base.patch_spatial
    tokens = frames * (height // patch) * (width // patch)
    clips_per_step = recipe.train.batch_size * recipe.train.grad_accum_steps
    result["geometry"] = {"latent_C_T_H_W": [channels, frames, height, width], "tokens": tokens,
                          "clips_per_step": clips_per_step, "flavor": recipe.model.flavor,
                          "activation_checkpointing": recipe.parallel.activation_checkpointing,
                          "compile": recipe.parallel.compile}
    flops = model_flops(parts.flavor, tokens, frames, part="control")
    result["model_flops_per_clip"] = flops
    result["warmup"], result["plain"], result["marked"] = [], [], []

    def one_step(kind: str) -> None:
        timeline.begin(active=kind == "marked")
        common.synchronize(device)
        begun = time.perf_counter()
        metrics = trainer.train_step()
        timeline.mark("step_end")
        logger(metrics)
        common.synchronize(device)
        wall = time.perf_counter() - begun
        timeline.mark("logged")
        result[kind].append(step_record(metrics, wall,
                                        timeline.phases() if kind == "marked" else None))
        save(kind)

    if memory_history:
        common.record_allocations(device)
    try:
        for _ in range(warmup):
            one_step("warmup")
        if memory_history:
            result["live_after_warmup"] = common.live_allocations(device)
        result["memory_warmup"] = timeline.peak_memory()
        timeline.reset_peaks()  # the steps' peak, not the compilation's
        for _ in range(plain):
            one_step("plain")
        for _ in range(marked):
            one_step("marked")
        if profile:
            result["profile"] = common.kernel_profile(trainer.train_step, device)
            common.print_profile(result["profile"], top=12)
            save("profiled")
    except torch.OutOfMemoryError:
        if memory_history:
            result["live_at_oom"] = live = common.live_allocations(device)
            for row in live:
                print(f"{row['gib']:8.2f} GiB {row['count']:4d}x {row['sizes_mib']} "
                      f"{' < '.join(row['frames'])}")
        raise
    finally:
        logger.close()
    result["memory"] = timeline.peak_memory()
    result["encode_memory"] = timeline.encode_memory
    result["model_memory"] = timeline.model_memory
    result["ceiling"].append(common.matmul_ceiling(device))
    summarise(result, flops["total"] * clips_per_step)


def summarise(result: dict[str, Any], step_flops: float) -> None:
    plain = [s["wall_s"] for s in result["plain"]] or [s["wall_s"] for s in result["marked"]]
    step_s = statistics.median(plain)
    ceiling = max(c["tflops_median"] for c in result["ceiling"])
    breakdown = shares(result["marked"])
    fwd_bwd = breakdown.get("parts", {}).get("model_forward_backward", {}).get("median_s")
    clips = result["geometry"]["clips_per_step"]
    result["summary"] = {
        "median_step_s": step_s,
        "median_marked_step_s": breakdown.get("median_marked_step_s"),
        "samples_per_s": clips / step_s,
        "tokens_per_s": clips * result["geometry"]["tokens"] / step_s,
        "peak_allocated_gib": result["memory"].get("peak_allocated_gib"),
        "peak_reserved_gib": result["memory"].get("peak_reserved_gib"),
        "skipped_steps": sum(s["skipped"] for s in result["plain"] + result["marked"]),
        "model_peak_allocated_gib": max(
            (m["peak_allocated_gib"] for m in result.get("model_memory", [])), default=None),
        "tokenizer_encode_extra_gib": max(
            (e["peak_allocated_gib"] - e["allocated_before_gib"]
             for e in result.get("encode_memory", [])), default=None),
        # What metrics.jsonl calls data wait: the Trainer's clock around next() and to_batch,
        # which holds both tokenizer encodes.
        "trainer_data_wait_share": statistics.median(
            s["data_wait_s"] / s["trainer_seconds"] for s in result["plain"] + result["marked"]),
        "model_flops_per_step": step_flops,
        "model_tflops": step_flops / step_s / 1e12,
        "matmul_tflops": ceiling,
        "ratio_to_matmul": step_flops / step_s / 1e12 / ceiling,
        "ratio_to_matmul_fwd_bwd_only": (step_flops / fwd_bwd / 1e12 / ceiling
                                         if fwd_bwd else None),
        "parts": breakdown.get("parts", {}),
        "phases": breakdown.get("phases", {}),
    }


def print_summary(result: dict[str, Any]) -> None:
    summary = result.get("summary")
    if not summary:
        return
    rows: list[tuple[str, ...]] = [(part, f"{v['median_s']:.3f}", f"{100 * v['share']:.1f} %")
            for part, v in summary["parts"].items()]
    common.print_table(rows, header=("part", "median s", "share"))
    print()
    rows = [(str(name), f"{v['median_s']:.3f}", f"{100 * v['share']:.1f} %")
            for name, v in sorted(summary["phases"].items(), key=lambda kv: -kv[1]["share"])]
    common.print_table(rows, header=("phase", "median s", "share"))
    print()
    print(f"step {summary['median_step_s']:.3f} s (marked {summary['median_marked_step_s']:.3f} s)"
          f", {summary['samples_per_s']:.4f} samples/s, {summary['tokens_per_s']:.0f} tokens/s, "
          f"peak {summary['peak_allocated_gib'] or 0:.1f} GiB allocated, "
          f"{summary['model_tflops']:.3g} model TFLOP/s = {summary['ratio_to_matmul']:.3f} of "
          f"the {summary['matmul_tflops']:.3g} TFLOP/s matmul rate "
          f"(fwd+bwd alone: {summary['ratio_to_matmul_fwd_bwd_only'] or float('nan'):.3f}); "
          f"skipped steps {summary['skipped_steps']}")
    if summary["tokenizer_encode_extra_gib"] is not None:
        print(f"a tokenizer encode takes up to {summary['tokenizer_encode_extra_gib']:.2f} GiB "
              "above what is allocated when it starts")


if __name__ == "__main__":
    main()
