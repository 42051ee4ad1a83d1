"""The tokenizer encode's heaviest operations at 121×704×1280, each timed several ways, to say
which way the encode should run them.

``bench/tokenizer_encode.py`` times whole encodes; this script times its parts alone. The
shapes are those of the CV8x8x8 encoder (diffusers' ``AutoencoderKLCosmos`` at the released
configuration, listed with a dispatch trace over a 121-frame 720p clip):

* the factorised causal convolutions: a spatial (1, 3, 3) kernel (33 % and 17 % of the
  encode's 35.7 TFLOP at 512 channels on 16 × 90 × 162 and 256 channels on 31 × 178 × 322) and a
  temporal (3, 1, 1) kernel (12 % at 512 channels on 18 × 88 × 160), each as the traced graph
  runs it (a 3-D convolution of a contiguous tensor), on channels-last-3d tensors, and as a 2-D
  convolution (frames folded into the batch for the spatial kernel, positions folded into the
  width for the temporal one) on channels-last tensors;
* the Haar wavelet's depthwise 3-D convolutions (no FLOPs to speak of, 0.7 GB per call):
  as a grouped convolution and as the sums and differences of strided slices it computes;
* the spatial attention of the lowest level (16 latent frames, 14,080 positions, one head of
  512 channels: 18 % of the FLOPs): ``scaled_dot_product_attention`` (the fused replay; at head
  width 512 torch has only its memory-efficient kernel), the released form (batched products
  and a softmax, scores materialised), and the same in query chunks.

Each way: median of ``--repeats`` after two warm-ups, TFLOP/s (of the operation's FLOPs), peak
memory above what was allocated before, and the relative L2 distance of its output from the
first way's.

Usage (on the GPU, from the repository root)::

    python bench/encode_kernels.py --out bench/results/encode_kernels-<gpu>.json
    python bench/encode_kernels.py --device cpu --scale 0.125 --out /tmp/k.json   # smoke test
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

Way = Callable[[], torch.Tensor]


def _scaled(size: int, scale: float) -> int:
    return max(4, round(size * scale))


def spatial_conv(channels: int, frames: int, height: int, width: int, *, device: torch.device,
                 dtype: torch.dtype) -> tuple[float, dict[str, Way]]:
    """A (1, 3, 3) convolution over ``[1, C, T, H, W]`` (already padded), three ways."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, channels, frames, height, width, generator=gen, device=device, dtype=dtype)
    w = torch.randn(channels, channels, 1, 3, 3, generator=gen, device=device,
                    dtype=dtype) / math.sqrt(9 * channels)
    flops = 2.0 * channels * channels * 9 * frames * (height - 2) * (width - 2)
    x_cl, w_cl = (t.to(memory_format=torch.channels_last_3d) for t in (x, w))
    # frames into the batch: [T, C, H, W] in channels-last (the layout a 2-D kernel prefers)
    x_2d = x[0].transpose(0, 1).contiguous(memory_format=torch.channels_last)
    w_2d = w[:, :, 0].contiguous(memory_format=torch.channels_last)
    return flops, {
        "conv3d": lambda: F.conv3d(x, w),
        "conv3d channels-last-3d": lambda: F.conv3d(x_cl, w_cl),
        "conv2d over frames, channels-last (input already laid out)":
            lambda: F.conv2d(x_2d, w_2d).transpose(0, 1).unsqueeze(0),
        "conv2d over frames, channels-last (with the layout changes)":
            lambda: F.conv2d(x[0].transpose(0, 1).contiguous(memory_format=torch.channels_last),
                             w_2d).transpose(0, 1).unsqueeze(0).contiguous(),
    }


def temporal_conv(channels: int, frames: int, height: int, width: int, *,
                  device: torch.device, dtype: torch.dtype) -> tuple[float, dict[str, Way]]:
    """A (3, 1, 1) convolution over ``[1, C, T, H, W]`` (already padded), three ways."""
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(1, channels, frames, height, width, generator=gen, device=device, dtype=dtype)
    w = torch.randn(channels, channels, 3, 1, 1, generator=gen, device=device,
                    dtype=dtype) / math.sqrt(3 * channels)
    flops = 2.0 * channels * channels * 3 * (frames - 2) * height * width
    x_cl, w_cl = (t.to(memory_format=torch.channels_last_3d) for t in (x, w))
    # positions into the width: [1, C, T, H·W], a (3, 1) kernel
    x_2d = x.reshape(1, channels, frames, height * width).contiguous(
        memory_format=torch.channels_last)
    w_2d = w[..., 0].contiguous(memory_format=torch.channels_last)
    return flops, {
        "conv3d": lambda: F.conv3d(x, w),
        "conv3d channels-last-3d": lambda: F.conv3d(x_cl, w_cl),
        "conv2d (3, 1) over [1, C, T, H*W], channels-last":
            lambda: F.conv2d(x_2d, w_2d).reshape(1, channels, frames - 2, height, width),
    }


def haar_conv(channels: int, frames: int, height: int, width: int, *, device: torch.device,
              dtype: torch.dtype) -> tuple[float, dict[str, Way]]:
    """The wavelet's temporal step: each channel's frame pairs, (a + b) and (a - b) over √2,
    as the grouped convolution the traced graph runs and as strided slices."""
    gen = torch.Generator(device=device).manual_seed(2)
    x = torch.randn(1, channels, frames, height, width, generator=gen, device=device, dtype=dtype)
    low = torch.full((channels, 1, 2, 1, 1), 2 ** -0.5, device=device, dtype=dtype)
    high = low.clone()
    high[:, :, 1] *= -1

    def grouped() -> torch.Tensor:
        return torch.cat([F.conv3d(x, low, stride=(2, 1, 1), groups=channels),
                          F.conv3d(x, high, stride=(2, 1, 1), groups=channels)], dim=1)

    def slices() -> torch.Tensor:
        a, b = x[:, :, 0::2], x[:, :, 1::2]
        return torch.cat([(a + b) * 2 ** -0.5, (a - b) * 2 ** -0.5], dim=1)

    return 4.0 * channels * (frames // 2) * height * width, {
        "grouped conv3d": grouped, "strided slices": slices}


def spatial_attention(frames: int, positions: int, channels: int, *, device: torch.device,
                      dtype: torch.dtype, chunk: int) -> tuple[float, dict[str, Way]]:
    """One head of ``channels`` over ``positions`` per frame, three ways."""
    gen = torch.Generator(device=device).manual_seed(3)
    q, k, v = (torch.randn(frames, positions, channels, generator=gen, device=device,
                           dtype=dtype) for _ in range(3))
    scale = channels ** -0.5
    flops = 4.0 * frames * positions * positions * channels

    def materialised(rows: slice = slice(None)) -> torch.Tensor:
        scores = torch.bmm(q[:, rows], k.transpose(1, 2)) * scale
        return torch.bmm(torch.softmax(scores, dim=2), v)

    def chunked() -> torch.Tensor:
        return torch.cat([materialised(slice(start, start + chunk))
                          for start in range(0, positions, chunk)], dim=1)

    return flops, {
        "scaled_dot_product_attention": lambda: F.scaled_dot_product_attention(
            q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1),
        "materialised (released form)": materialised,
        f"materialised in query chunks of {chunk}": chunked,
    }


def time_ways(name: str, flops: float, ways: dict[str, Way], *, device: torch.device,
              repeats: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    reference: torch.Tensor | None = None
    for way, fn in ways.items():
        with torch.no_grad():
            for _ in range(2):
                fn()
            common.reset_peak(device)
            before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            median, times, out = common.timed_median(fn, device, repeats)
        row: dict[str, Any] = {"way": way, "times_s": times, "median_ms": median * 1e3,
                               "tflops": flops / median / 1e12}
        if device.type == "cuda":
            row["peak_above_gib"] = (torch.cuda.max_memory_allocated(device) - before) / common.GIB
        if reference is None:
            reference = out.float()
        else:
            row["rel_l2_vs_first"] = ((out.float() - reference).norm()
                                      / reference.norm()).item()
        rows.append(row)
        print(f"{name:28s} {way:62s} {row['median_ms']:9.2f} ms {row['tflops']:7.1f} TFLOP/s"
              + (f"  rel L2 {row['rel_l2_vs_first']:.1e}" if "rel_l2_vs_first" in row else ""),
              flush=True)
        del out
    return {"operation": name, "flops": flops, "ways": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="spatial sizes times this (a CPU smoke test: 0.125)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=2048,
                        help="query rows per chunk of the chunked attention")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    s = args.scale

    def hw(height: int, width: int) -> tuple[int, int]:
        return _scaled(height, s), _scaled(width, s)

    cases: list[tuple[str, Callable[[], tuple[float, dict[str, Way]]]]] = [
        ("spatial conv 512ch", lambda: spatial_conv(512, 16, *hw(90, 162), device=device,
                                                      dtype=dtype)),
        ("spatial conv 256ch", lambda: spatial_conv(256, 31, *hw(178, 322), device=device,
                                                      dtype=dtype)),
        ("temporal conv 512ch", lambda: temporal_conv(512, 18, *hw(88, 160), device=device,
                                                        dtype=dtype)),
        ("temporal conv 256ch", lambda: temporal_conv(256, 33, *hw(176, 320), device=device,
                                                        dtype=dtype)),
        ("haar step 24ch", lambda: haar_conv(24, 62, *hw(353, 641), device=device,
                                             dtype=dtype)),
        ("spatial attention", lambda: spatial_attention(
            16, math.prod(hw(88, 160)), 512, device=device, dtype=dtype,
            chunk=min(args.chunk, math.prod(hw(88, 160))))),
    ]
    result: dict[str, Any] = {"benchmark": "encode_kernels", "device": common.device_name(device),
                              "torch": torch.__version__, "date": common.now(),
                              "command": " ".join(sys.argv), "dtype": str(dtype),
                              "scale": s, "operations": []}
    for name, make in cases:
        flops, ways = make()
        result["operations"].append(time_ways(name, flops, ways, device=device,
                                              repeats=args.repeats))
        del ways
        if device.type == "cuda":
            torch.cuda.empty_cache()
        common.write_json(result, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
