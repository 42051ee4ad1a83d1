"""Training-sample throughput on CPU: 121-frame 720p clips → edge hint → 1280x704 bucket.

Compares ctrlpost's dataset path (one seek, sequential decode, chunked float bicubic resize,
reflection pad) with a reference-style per-frame pipeline on the same clips and sample draws:
a seek before every frame, then one torch resize and one pad call per frame. Both compute the
edge hint the same way (INTER_AREA shrink into the box, then Canny), and their outputs are
checked to be equal, so the figures compare the same work.

The clips are made here: textured 1280x720 H.264 (libx264 from imageio-ffmpeg, default long
GOP, like downloaded videos), or mp4v when that encoder is missing.

Usage: python bench/loader.py [--clips 3] [--frames 130] [--workers 2];
writes bench/results/loader-cpu.json and prints a table.

Data-wait mode (``--wait-steps N``): the real DataLoader with the recipe's workers and prefetch
(``--recipe``, default recipes/edge_hdvila.toml: 8 workers, prefetch 2) feeds a consumer that
takes ``--step-s`` seconds per training step (sleeping: the GPU's time; the training process's
own CPU use is one launch thread). Reports the time blocked in ``next()`` per step, its share of
the step (first step apart: worker start-up happens once per run), and the loader's clips/s
when nothing waits for it. Example (on the GPU box, whose CPUs are the ones training uses)::

    python bench/loader.py --wait-steps 12 --step-s 13 --clips 4 --skip-compare \
        --out bench/results/loader-wait-<machine>.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ctrlpost.data import buckets, text, video
from ctrlpost.data.dataset import ClipDataset
from ctrlpost.data.loader import build_loader
from ctrlpost.modalities import registry, sample_rng

NUM_FRAMES = 121
WIDTH, HEIGHT = 1280, 720


def textured_frames(count: int, seed: int) -> np.ndarray:
    """uint8 RGB [count, 720, 1280, 3]: a drifting noise texture with moving bright boxes."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.integers(0, 256, (HEIGHT + 64, WIDTH + 64, 3), dtype=np.uint8),
                            (0, 0), 2.0)
    frames = np.empty((count, HEIGHT, WIDTH, 3), dtype=np.uint8)
    for t in range(count):
        dy, dx = (t // 2) % 64, t % 64
        frame = base[dy:dy + HEIGHT, dx:dx + WIDTH].copy()
        for k in range(4):
            x0 = (97 * k + 9 * t) % (WIDTH - 200)
            y0 = (151 * k + 4 * t) % (HEIGHT - 150)
            frame[y0:y0 + 150, x0:x0 + 200] = (60 * k + 40, 255 - 50 * k, 128)
        frames[t] = frame
    return frames


def write_h264(path: Path, frames: np.ndarray) -> bool:
    """Encode with imageio-ffmpeg's ffmpeg (libx264, default GOP); False if unavailable."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return False
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo",
           "-pix_fmt", "rgb24", "-s", f"{WIDTH}x{HEIGHT}", "-r", "24", "-i", "-",
           "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p",
           str(path)]
    done = subprocess.run(cmd, input=frames.tobytes(), capture_output=True, check=False)
    return done.returncode == 0


def write_mp4v(path: Path, frames: np.ndarray) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 24.0, (WIDTH, HEIGHT))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def make_dataset(root: Path, clips: int, frames: int) -> str:
    """``clips`` textured 720p clips with embeddings; returns the codec used."""
    codec = "h264"
    for i in range(clips):
        path = root / "videos" / f"clip{i}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = textured_frames(frames, seed=i)
        if codec == "h264" and not write_h264(path, pixels):
            codec = "mp4v"
        if codec == "mp4v":
            write_mp4v(path, pixels)
        text.write_embedding(text.embedding_path(root, f"clip{i}"),
                             np.zeros((8, 1024), np.float16))
    return codec


def reference_style(dataset: ClipDataset, index: int, epoch: int) -> dict[str, torch.Tensor]:
    """The same sample, made the per-frame way: a seek per frame, a resize and a pad per frame."""
    rng = sample_rng(dataset.seed, epoch, index)
    cap = cv2.VideoCapture(str(dataset.video_path(index)))
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    start = int(rng.integers(0, count - dataset.num_frames, endpoint=True))
    frames = []
    for t in range(start, start + dataset.num_frames):
        cap.set(cv2.CAP_PROP_POS_FRAMES, t)
        ok, bgr = cap.read()
        assert ok
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    frames_T_H_W_C = np.stack(frames)
    drawn = dataset.generator.draw(rng)
    fit = buckets.fit(dataset.resolution, WIDTH, HEIGHT)
    hint_T_H_W_C = dataset.generator.render(video.shrink_for_hint(frames_T_H_W_C, fit), drawn)
    return {"video": _per_frame_fit(frames_T_H_W_C, fit),
            "hint": _per_frame_fit(hint_T_H_W_C, fit)}


def _per_frame_fit(frames_T_H_W_C: np.ndarray, fit: buckets.Fit) -> torch.Tensor:
    out = []
    for frame_H_W_C in frames_T_H_W_C:
        x_1_C_H_W = torch.from_numpy(frame_H_W_C).permute(2, 0, 1)[None].float()
        if x_1_C_H_W.shape[-2:] != (fit.scaled_height, fit.scaled_width):
            x_1_C_H_W = F.interpolate(x_1_C_H_W, size=(fit.scaled_height, fit.scaled_width),
                                      mode="bicubic", antialias=True)
        x_1_C_H_W = x_1_C_H_W.clamp(0, 255).round()
        x_1_C_H_W = F.pad(x_1_C_H_W, (fit.pad_left, fit.pad_right, fit.pad_top,
                                      fit.pad_bottom), mode="reflect")
        out.append(x_1_C_H_W[0].to(torch.uint8))
    return torch.stack(out, dim=1)


def stage_times(dataset: ClipDataset, index: int, epoch: int) -> dict[str, float]:
    """Seconds per stage of ctrlpost's path for one sample."""
    rng = sample_rng(dataset.seed, epoch, index)
    t0 = time.perf_counter()
    with video.VideoReader(dataset.video_path(index)) as reader:
        start = int(rng.integers(0, reader.frame_count() - dataset.num_frames, endpoint=True))
        frames = reader.read(start, dataset.num_frames)
    t1 = time.perf_counter()
    fit = buckets.fit(dataset.resolution, WIDTH, HEIGHT)
    hint = dataset.generator.render(video.shrink_for_hint(frames, fit),
                                    dataset.generator.draw(rng))
    t2 = time.perf_counter()
    video.fit_frames(frames, fit)
    video.fit_frames(hint, fit)
    t3 = time.perf_counter()
    return {"decode_s": t1 - t0, "hint_s": t2 - t1, "resize_pad_s": t3 - t2}


def timed_clips(fn: Any, keys: list[tuple[int, int]]) -> tuple[float, Any]:
    start = time.perf_counter()
    last = None
    for index, epoch in keys:
        last = fn(index, epoch)
    return time.perf_counter() - start, last


def loader_rate(dataset: ClipDataset, workers: int, samples: int) -> float:
    """Clips/s of the real DataLoader path with ``workers`` spawned workers, after warm-up."""
    with build_loader(dataset, rank=0, world_size=1, seed=0, num_workers=workers,
                      prefetch_factor=1) as batches:
        next(batches)  # worker start-up (spawn + imports) is not throughput
        start = time.perf_counter()
        for _ in range(samples):
            next(batches)
        return samples / (time.perf_counter() - start)


def data_wait(dataset: ClipDataset, *, workers: int, prefetch: int, steps: int,
              step_s: float) -> dict[str, Any]:
    """Per-step seconds blocked in ``next()`` while the consumer spends ``step_s`` per step."""
    waits = []
    started = time.perf_counter()
    with build_loader(dataset, rank=0, world_size=1, seed=0, num_workers=workers,
                      prefetch_factor=prefetch) as batches:
        for _ in range(steps):
            fetched = time.perf_counter()
            next(batches)
            waits.append(time.perf_counter() - fetched)
            time.sleep(step_s)
        total = time.perf_counter() - started
        # Throughput with nobody waiting: drain what is prefetched, then time fresh clips.
        for _ in range(workers * prefetch):
            next(batches)
        fresh = max(2 * workers, 4)
        t0 = time.perf_counter()
        for _ in range(fresh):
            next(batches)
        rate = fresh / (time.perf_counter() - t0)
    steady = waits[1:]
    return {
        "workers": workers, "prefetch_factor": prefetch, "steps": steps, "step_s": step_s,
        "wait_s": waits, "first_wait_s": waits[0],
        "steady_wait_fraction": sum(steady) / (sum(steady) + step_s * len(steady)),
        "wait_fraction_incl_first": sum(waits) / (sum(waits) + step_s * len(waits)),
        "wall_s": total, "clips_per_s_unthrottled": rate,
        "clips_per_s_needed": 1 / step_s, "margin": rate * step_s,
    }


def edge_dataset(root: Path, clips: int, frames: int) -> tuple[ClipDataset, str, float]:
    """720p clips written under ``root`` and the edge dataset over them: (dataset, codec,
    seconds spent writing the clips)."""
    edge = registry.get_modality("edge")
    made = time.perf_counter()
    codec = make_dataset(root, clips, frames)
    made = time.perf_counter() - made
    dataset = ClipDataset(root, num_frames=NUM_FRAMES, resolution="720",
                          generator=edge.build_generator(edge.validate_params({})),
                          hint_key=edge.hint_key, seed=0, text_dim=1024)
    return dataset, codec, made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--frames", type=int, default=130)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--wait-steps", type=int, default=0,
                        help="data-wait mode: simulated training steps")
    parser.add_argument("--step-s", type=float, default=14.0,
                        help="seconds of GPU work per step in data-wait mode")
    parser.add_argument("--recipe", default=str(Path(__file__).resolve().parents[1] / "recipes"
                                                / "edge_hdvila.toml"),
                        help="recipe whose data.num_workers / prefetch_factor are used")
    parser.add_argument("--skip-compare", action="store_true",
                        help="skip the per-frame reference comparison and stage times")
    parser.add_argument("--out", type=Path, help="JSON path (default: results/loader-cpu.json, "
                        "or results/loader-wait.json in data-wait mode)")
    args = parser.parse_args()
    if args.wait_steps:
        wait_mode(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        dataset, codec, made = edge_dataset(Path(tmp), args.clips, args.frames)
        keys = [(i, 0) for i in range(args.clips)]
        load = os.getloadavg()[0]
        stages = stage_times(dataset, 0, 1)  # also the warm-up (allocator, OpenCV pools)
        ours_s, sample = timed_clips(lambda i, e: dataset.load(i, epoch=e), keys)
        ref_s, ref = timed_clips(lambda i, e: reference_style(dataset, i, e), keys)
        assert torch.equal(sample["video"], ref["video"]) and torch.equal(sample["hint"],
                                                                          ref["hint"])
        workers_rate = loader_rate(dataset, args.workers, args.clips) if args.workers else None
    figures = {
        "clips": args.clips, "codec": codec, "source": f"{WIDTH}x{HEIGHT}",
        "frames_per_sample": NUM_FRAMES, "sample": "1280x704 (1252x704 + 14 px reflect)",
        "ctrlpost_clips_per_s": args.clips / ours_s,
        "reference_style_clips_per_s": args.clips / ref_s,
        "speedup": ref_s / ours_s,
        "ctrlpost_stage_s": stages,
        f"loader_{args.workers}_workers_clips_per_s": workers_rate,
        "dataset_build_s": made,
        "outputs_equal": True,
        "load_average_at_start": load,
    }
    print(f"{'pipeline':34s} {'clips/s':>8s} {'s/clip':>8s}")
    for name, seconds in (("ctrlpost (1 seek, chunked resize)", ours_s),
                          ("reference-style (per-frame)", ref_s)):
        print(f"{name:34s} {args.clips / seconds:8.3f} {seconds / args.clips:8.2f}")
    if workers_rate:
        print(f"{f'ctrlpost DataLoader, {args.workers} workers':34s} {workers_rate:8.3f} "
              f"{1 / workers_rate:8.2f}")
    print("ctrlpost stages (s/clip): " + ", ".join(
        f"{k.removesuffix('_s')} {v:.2f}" for k, v in figures["ctrlpost_stage_s"].items()))
    out = args.out or Path(__file__).parent / "results" / "loader-cpu.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "device": f"{platform.processor() or platform.machine()} cpu, {torch.get_num_threads()} "
                  "torch threads",
        "torch": torch.__version__, "opencv": cv2.__version__,
        "date": dt.date.today().isoformat(), "figures": figures}, indent=2) + "\n")
    print(f"wrote {out}")


def wait_mode(args: argparse.Namespace) -> None:
    from ctrlpost.recipe import load as load_recipe

    recipe = load_recipe(args.recipe)
    workers, prefetch = recipe.data.num_workers, recipe.data.prefetch_factor
    with tempfile.TemporaryDirectory() as tmp:
        dataset, codec, made = edge_dataset(Path(tmp), args.clips, args.frames)
        load = os.getloadavg()[0]
        one_clip = stage_times(dataset, 0, 1)
        figures = data_wait(dataset, workers=workers, prefetch=prefetch, steps=args.wait_steps,
                            step_s=args.step_s)
    figures.update({"recipe": args.recipe, "clips": args.clips, "codec": codec,
                    "source": f"{WIDTH}x{HEIGHT}", "frames_per_sample": NUM_FRAMES,
                    "one_clip_stage_s": one_clip, "dataset_build_s": made,
                    "load_average_at_start": load, "cpus": os.cpu_count()})
    print(f"loader, {workers} workers, prefetch {prefetch}: "
          f"{figures['clips_per_s_unthrottled']:.2f} clips/s unthrottled "
          f"({figures['margin']:.1f}x what a {args.step_s:.1f} s step needs)")
    print(f"data wait: first step {figures['first_wait_s']:.1f} s (worker start-up), then "
          f"{100 * figures['steady_wait_fraction']:.2f}% of step time "
          f"({100 * figures['wait_fraction_incl_first']:.2f}% counting the first step); "
          f"waits {[round(w, 3) for w in figures['wait_s']]}")
    out = args.out or Path(__file__).parent / "results" / "loader-wait.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "loader data wait",
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "torch": torch.__version__, "opencv": cv2.__version__,
        "date": dt.date.today().isoformat(), "command": " ".join(sys.argv),
        "figures": figures}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
