"""Cost of the online depth hint (``control.params.source = "online"``) for one 7b sample.

A random network of Depth Anything V2 Small's released architecture (see annotate_speed.py)
renders the hint of one training window as the rank does: 121 frames of a 1280x720 clip
fitted to the 720p bucket (1252x704 of the clip's own pixels), through
:func:`ctrlpost_depth.online.render` (image processor in threads on the CPU, the network in
float16 on the GPU, levels over the window). It reports

* the wall time of one window's hint (what the trainer waits for if nothing overlaps it);
* the GPU time of the network alone (CUDA events around each batch call): the part of the
  hint that competes with the training step for the GPU when it is filled one batch ahead;
* with ``--step-seconds S`` (the 7b step time measured on the same GPU, e.g. by
  ``ctrlpost train recipes/edge_hdvila.toml --synthetic``), both as a share of that step.

    python plugins/depth/bench/online_cost.py --device cuda --step-seconds 16.4 --out r.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from annotate_speed import clip, released_architecture, write_report

from ctrlpost_depth.annotator import REPO, load
from ctrlpost_depth.online import render
from ctrlpost_depth.params import DepthParams


def network_gpu_seconds(model: object, frames: np.ndarray, batch_size: int) -> float:
    """GPU time of the network's calls for the window (CUDA events), processor excluded."""
    from ctrlpost_depth.annotator import _pixels

    network = model.network  # type: ignore[attr-defined]
    pixels = torch.cat([_pixels(model.processor, f) for f in frames])  # type: ignore[attr-defined]
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(frames), batch_size):
            batch = pixels[start:start + batch_size].to(network.device, network.dtype)
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            network(pixel_values=batch)
            end.record()
            end.synchronize()
            total += begin.elapsed_time(end) / 1000
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    frames = clip(args.frames, 704, 1252)  # the clip's own pixels in the 720p bucket
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / REPO
        released_architecture(folder)
        model = load({REPO: folder}, args.device)
    params = DepthParams(source="online", batch_size=args.batch_size)
    render(model, frames[:8], params)  # warm-up
    walls, gpus = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        hint = render(model, frames, params)
        walls.append(time.perf_counter() - start)
        gpus.append(network_gpu_seconds(model, frames, args.batch_size))
    wall, gpu = float(np.median(walls)), float(np.median(gpus))
    report: dict[str, object] = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "frames": args.frames, "size": "1252x704 (1280x720 in the 720p bucket)",
        "batch_size": args.batch_size, "repeats": args.repeats, "hint_shape": list(hint.shape),
        "wall_s": round(wall, 3), "wall_s_all": [round(w, 3) for w in walls],
        "network_gpu_s": round(gpu, 3), "network_gpu_s_all": [round(g, 3) for g in gpus]}
    if args.step_seconds:
        report["step_s"] = args.step_seconds
        report["gpu_share_of_step"] = round(gpu / args.step_seconds, 4)
        report["wall_share_of_step"] = round(wall / args.step_seconds, 4)
    write_report(report, args.out)


if __name__ == "__main__":
    main()
