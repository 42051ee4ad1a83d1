"""Time one training step of the base + control DiT (forward + backward) and its peak memory.

The default is the real job's shape on one GPU: the 7b flavor in bf16 with random weights, a
latent of 16×88×160 (121 frames of 704×1280; 56,320 tokens after 2×2 patching), 512×1024 text,
the base frozen and gradients only for the control branch, activation checkpointing applied
from outside the model. Usage (on a GPU machine, from the repository root):

    python bench/model_step.py                       # 7b, cuda, --ac-mode full
    python bench/model_step.py --ac-mode selective
    python bench/model_step.py --flavor tiny --device cpu   # smoke test, seconds on a CPU

It prints a table and writes ``bench/results/model_step-<device>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

try:
    import ctrlpost  # noqa: F401
except ImportError:  # a bare GPU box with only the source tree: use it directly
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ctrlpost.engine.parallel import AC_MODES, apply_activation_checkpointing
from ctrlpost.models import ControlledDiT, Flavor, build_controlled_dit, get_flavor

RESULTS = Path(__file__).resolve().parent / "results"
# Latent (T, H, W) per flavor when not given: the reference clip for 7b, a small grid otherwise.
DEFAULT_LATENT = {"7b": (16, 88, 160)}
SMALL_LATENT = (2, 16, 16)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
GIB = 1024**3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavor", default="7b", help="model flavor (7b, tiny)")
    parser.add_argument("--device", default="cuda", help="torch device (cuda, cuda:1, cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--frames", type=int, help="latent frames T (default: 16 for 7b)")
    parser.add_argument("--height", type=int, help="latent height (default: 88 for 7b)")
    parser.add_argument("--width", type=int, help="latent width (default: 160 for 7b)")
    parser.add_argument(
        "--ac-mode", choices=AC_MODES, default="full", help="activation checkpointing"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument(
        "--out", type=Path, help="JSON path (default: bench/results/model_step-<device>.json)"
    )
    return parser.parse_args(argv)


def build_model(
    flavor: Flavor, device: torch.device, dtype: torch.dtype, ac_mode: str
) -> ControlledDiT:
    """Meta-device build, then allocation on ``device`` in ``dtype`` and the reference init."""
    with torch.device("meta"):
        model = build_controlled_dit(flavor)
    model = model.to(dtype=dtype)  # free on meta: weights are born in the final dtype
    model.to_empty(device=device)
    model.init_weights()
    model.base.requires_grad_(False)
    apply_activation_checkpointing(model, ac_mode)  # type: ignore[arg-type]
    return model


def make_batch(
    flavor: Flavor, latent_thw: tuple[int, int, int], device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """Random inputs of the training step's shapes (batch 1, one conditioning frame)."""
    frames, height, width = latent_thw
    channels = flavor.base.latent_channels
    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    condition = torch.zeros(1, 1, frames, height, width, device=device, dtype=dtype)
    condition[:, :, :1] = 1
    return {
        "x_B_C_T_H_W": randn(1, channels, frames, height, width),
        "c_noise": torch.tensor([0.25], device=device),
        "text_B_M_C": randn(1, flavor.base.text_tokens, flavor.base.text_dim),
        "hint_B_C_T_H_W": randn(1, channels, frames, height, width),
        "condition_mask_B_1_T_H_W": condition,
        "padding_mask_B_1_H_W": torch.zeros(
            1, 1, 8 * height, 8 * width, device=device, dtype=dtype
        ),
        "fps_B": torch.tensor([24.0], device=device),
        "target": randn(1, channels, frames, height, width),
    }


def train_step(model: ControlledDiT, batch: dict[str, Any]) -> float:
    """Forward, MSE loss, backward; gradients are dropped so every step starts alike."""
    inputs = dict(batch)
    target = inputs.pop("target")
    x, c_noise, text = inputs.pop("x_B_C_T_H_W"), inputs.pop("c_noise"), inputs.pop("text_B_M_C")
    out = model(x, c_noise, text, **inputs)
    loss = (out.float() - target.float()).square().mean()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.item()  # .item() also waits for the device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def measure(
    model: ControlledDiT, batch: dict[str, Any], device: torch.device, *, warmup: int, repeats: int
) -> dict[str, Any]:
    for _ in range(warmup):
        train_step(model, batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        losses.append(train_step(model, batch))
        synchronize(device)
        times.append(time.perf_counter() - start)
    peak = None
    if device.type == "cuda":
        peak = {
            "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
        }
    else:  # Linux reports KiB; the whole process, weights included
        peak = {"peak_host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}
    return {"step_times_s": times, "s_per_step": statistics.median(times), "losses": losses, **peak}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flavor = get_flavor(args.flavor)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    default_thw = DEFAULT_LATENT.get(flavor.name, SMALL_LATENT)
    latent_thw = (
        args.frames or default_thw[0],
        args.height or default_thw[1],
        args.width or default_thw[2],
    )
    patch = flavor.base.patch_spatial
    tokens = (
        latent_thw[0]
        // flavor.base.patch_temporal
        * (latent_thw[1] // patch)
        * (latent_thw[2] // patch)
    )

    torch.manual_seed(0)  # the same random weights for every run and mode
    start = time.perf_counter()
    model = build_model(flavor, device, dtype, args.ac_mode)
    synchronize(device)
    build_s = time.perf_counter() - start
    print(f"built {flavor.name} on {device} in {build_s:.1f} s", flush=True)
    batch = make_batch(flavor, latent_thw, device, dtype)
    result = measure(model, batch, device, warmup=args.warmup, repeats=args.repeats)

    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    record = {
        "benchmark": "model_step",
        "device": device_name(device),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "flavor": flavor.name,
        "dtype": args.dtype,
        "ac_mode": args.ac_mode,
        "latent_B_C_T_H_W": [1, flavor.base.latent_channels, *latent_thw],
        "text_B_M_C": [1, flavor.base.text_tokens, flavor.base.text_dim],
        "tokens": tokens,
        "base_params": count(model.base),
        "control_params": count(model.control),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "build_s": build_s,
        **result,
    }
    out = args.out or RESULTS / f"model_step-{slug(record['device'])}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")

    rows = [
        ("device", record["device"]),
        ("torch", record["torch"]),
        ("flavor / dtype", f"{flavor.name} / {args.dtype}"),
        ("latent B,C,T,H,W", "×".join(map(str, record["latent_B_C_T_H_W"]))),
        ("tokens", f"{tokens:,}"),
        ("activation checkpointing", args.ac_mode),
        (f"s/step (median of {args.repeats})", f"{record['s_per_step']:.3f}"),
        *(
            (key.replace("_", " "), f"{value:.2f}")
            for key, value in result.items()
            if key.startswith("peak")
        ),
        ("written", str(out)),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
