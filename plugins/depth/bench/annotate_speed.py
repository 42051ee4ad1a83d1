"""Speed of the depth annotator on one 720p clip, against the reference's way (one frame per call).

A random network of Depth Anything V2 Small's exact architecture (the released config: Dinov2
width 384, 12 layers; DPT neck 48/96/192/384, fusion 64) stands in for the released weights,
which cannot be fetched here: the work per frame is the same. For a 121-frame 1280x720 clip it
times

* the reference's way: per frame a PIL image through the processor, the network, the bicubic
  resize back, on the device;
* :func:`ctrlpost_depth.annotator.predict` at several batch sizes;
* the image processor alone (PIL, on the CPU),

and compares the levels (one min-max over the clip, truncated) of the batched maps with the
per-frame ones. Writes JSON to ``--out``.

    python plugins/depth/bench/annotate_speed.py --device cuda --out result.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ctrlpost_depth.annotator import PROCESSOR, REPO, load, predict


def released_architecture(folder: Path) -> None:
    """Save a random network with the released repo's config and processor in ``folder``."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    stages = {"out_features": ["stage3", "stage6", "stage9", "stage12"],
              "reshape_hidden_states": False}
    backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                            image_size=518, patch_size=14, **stages)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=384,
                                 neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64,
                                 head_hidden_size=32, patch_size=14)
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(PROCESSOR))


def clip(T: int, H: int, W: int) -> np.ndarray:
    """A smooth moving scene with grain: RGB uint8 [T, H, W, 3]."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    out = np.empty((T, H, W, 3), np.uint8)
    for t in range(T):
        disc = ((y - H / 2) ** 2 + (x - W / 4 - 4 * t) ** 2) < (H / 5) ** 2
        base = np.stack([x / W * 200, y / H * 200, (x + y + 3 * t) % 255], -1)
        out[t] = np.clip(np.where(disc[..., None], 240, base) + rng.normal(0, 4, (H, W, 3)),
                         0, 255)
    return out


def reference_way(model: object, frames: np.ndarray) -> np.ndarray:
    """One frame per call, as the reference's producer."""
    from PIL import Image

    processor, network = model.processor, model.network  # type: ignore[attr-defined]
    depths = []
    for frame in frames:
        image = Image.fromarray(frame)
        inputs = processor(images=image, return_tensors="pt").to(network.device,
                                                                 dtype=network.dtype)
        with torch.no_grad():
            predicted = network(**inputs).predicted_depth
        depths.append(torch.nn.functional.interpolate(
            predicted.unsqueeze(1), size=image.size[::-1], mode="bicubic",
            align_corners=False).squeeze().cpu().numpy())
    return np.stack(depths)


def levels(depth: np.ndarray) -> np.ndarray:
    return ((depth - depth.min()) / (depth.max() - depth.min()) * 255.0).astype(np.uint8)


def timed(fn: object, sync: bool) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()  # type: ignore[operator]
    if sync:
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--batch-sizes", default="1,8,16,32")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sync = args.device.startswith("cuda")
    frames = clip(args.frames, 720, 1280)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / REPO
        released_architecture(folder)
        model = load({REPO: folder}, args.device)
    predict(model, frames[:4], 4)  # warm-up
    from PIL import Image

    _, processor_s = timed(lambda: model.processor(
        images=[Image.fromarray(f) for f in frames], return_tensors="pt"), False)
    reference, reference_s = timed(lambda: reference_way(model, frames), sync)
    report: dict[str, object] = {
        "device": torch.cuda.get_device_name() if sync else "cpu", "dtype": str(model.dtype),
        "frames": args.frames, "size": "1280x720", "torch": torch.__version__,
        "processor_only_s": round(processor_s, 3),
        "reference_way": {"s": round(reference_s, 3),
                          "frames_per_s": round(args.frames / reference_s, 2)},
        "batched": {}}
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        depth, seconds = timed(lambda b=batch_size: predict(model, frames, b), sync)
        diff = np.abs(levels(depth).astype(int) - levels(reference))  # type: ignore[arg-type]
        report["batched"][str(batch_size)] = {  # type: ignore[index]
            "s": round(seconds, 3), "frames_per_s": round(args.frames / seconds, 2),
            "speedup": round(reference_s / seconds, 2), "levels_max_diff": int(diff.max()),
            "levels_equal": round(float((diff == 0).mean()), 6)}
    write_report(report, args.out)


def write_report(report: dict[str, object], out: Path | None) -> None:
    """Print the JSON report, and write it to ``out`` when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
