"""One tokenizer encode of a 121-frame 720p clip, as the engine's step runs it, under settings
that could make it cheaper: cuDNN's convolution autotuner and channels-last input; then
(``--variants``) the same graph or weights run other ways: the frozen, inference-optimised
TorchScript graph; the graph replayed as aten calls (``ctrlpost.models.jit_replay``), eager and
under ``torch.compile``, with its materialised attention as it is a few frames at a time (what
``parallel.compile_tokenizer`` runs), fused, or all frames at once, its Haar steps as sums of
slices or as depthwise convolutions, its factorised convolutions as 2-D or 3-D ones; diffusers'
eager encoder and that encoder compiled (with channels-last variants); and (``--profile``)
where the default encode's and each variant's GPU time goes, by kind of kernel (convolution,
attention, products, compiled elementwise, ...) and by kernel.

The tokenizer is the random-weight CV8x8x8 of ``cosmos_tokenizer.py`` (diffusers'
``AutoencoderKLCosmos`` with the released code's attention, traced to the released
``encoder.jit`` interface; ``--attention diffusers`` keeps diffusers' fused one), loaded with
``VideoTokenizer.from_files`` as ``ctrlpost train`` loads it. Each setting: median of
``--repeats`` encodes after two warm-ups, its peak memory above what was allocated before, and
the latent's relative L2 distance from the default setting's (convolution algorithms differ in
rounding). The encode's FLOPs come from torch's FLOP counter over diffusers' eager encoder.

Usage (on the GPU, from the repository root)::

    python bench/tokenizer_encode.py --out bench/results/tokenizer_encode-<gpu>.json
    python bench/tokenizer_encode.py --settings default --profile \
        --variants jit-replay-compiled,diffusers-compiled --out ...
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common
import cosmos_tokenizer

common.ensure_ctrlpost_importable()

from ctrlpost.models.jit_replay import GraphReplay  # noqa: E402
from ctrlpost.models.tokenizer import VideoTokenizer  # noqa: E402
from ctrlpost.tokenizer_geometry import COMPILED_ENCODE_SCORE_BUDGET  # noqa: E402

SETTINGS = ("default", "cudnn-benchmark", "channels-last", "cudnn-benchmark+channels-last")


def encode_flops(video: torch.Tensor, dtype: torch.dtype) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = cosmos_tokenizer.build_autoencoder(tiny=False, seed=0, device=video.device,
                                               dtype=dtype)
    encoder = cosmos_tokenizer.ReleasedEncoder(model)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoder(video.to(dtype))
    del model, encoder
    return float(counter.get_total_flops())


def _replay(*, fused: bool, compiled: bool, sums: bool = False, as_2d: bool = False,
            score_budget: int | None = COMPILED_ENCODE_SCORE_BUDGET) -> Any:
    """The graph as aten calls (ctrlpost's replay); ``fused``: its materialised attention
    matched, run a slice of frames at a time (at most ``score_budget`` scores) or, with
    ``score_budget=None``, as one fused attention; ``sums``: its Haar steps as sums of slices;
    ``as_2d``: its factorised convolutions as 2-D ones (all three, sliced, compiled: what
    ``parallel.compile_tokenizer`` runs)."""
    def build(plain: Any, dtype: torch.dtype) -> Any:
        module = GraphReplay(plain, fuse_attention=fused, attention_score_budget=score_budget,
                             depthwise_as_sums=sums, convolutions_as_2d=as_2d)
        return torch.compile(module, dynamic=False, fullgraph=True) if compiled else module
    return build


def _diffusers(*, compiled: bool, channels_last: bool) -> Any:
    """diffusers' own encoder (fused attention) on the same seed's weights."""
    def build(plain: Any, dtype: torch.dtype) -> Any:
        device = next(plain.parameters()).device
        autoencoder = cosmos_tokenizer.build_autoencoder(tiny=False, seed=0, device=device,
                                                         dtype=dtype, attention="diffusers")
        module: Any = cosmos_tokenizer.ReleasedEncoder(autoencoder)
        if channels_last:  # weights and input: no layout changes inside
            module = module.to(memory_format=torch.channels_last_3d)
        return torch.compile(module) if compiled else module
    return build


VARIANTS: dict[str, Any] = {
    "jit-frozen": lambda plain, dtype: torch.jit.optimize_for_inference(torch.jit.freeze(plain)),
    "jit-replay": _replay(fused=False, compiled=False),
    "jit-replay-fused": _replay(fused=True, compiled=False, score_budget=None),
    # parallel.compile_tokenizer's setting, then each rewrite undone alone
    "jit-replay-compiled": _replay(fused=True, compiled=True, sums=True, as_2d=True),
    "jit-replay-compiled-fused": _replay(fused=True, compiled=True, sums=True, as_2d=True,
                                         score_budget=None),
    "jit-replay-compiled-unsliced": _replay(fused=False, compiled=True, sums=True, as_2d=True),
    "jit-replay-compiled-depthwise-convs": _replay(fused=True, compiled=True, as_2d=True),
    "jit-replay-compiled-3d-convs": _replay(fused=True, compiled=True, sums=True),
    "diffusers-eager": _diffusers(compiled=False, channels_last=False),
    "diffusers-compiled": _diffusers(compiled=True, channels_last=False),
    "diffusers-eager-channels-last": _diffusers(compiled=False, channels_last=True),
    "diffusers-compiled-channels-last": _diffusers(compiled=True, channels_last=True),
}
"""``--variants``: name → builder of the encoder from the loaded ``encoder.jit`` and dtype."""


def variant_rows(folder: Path, video: torch.Tensor, dtype: torch.dtype, repeats: int,
                 names: list[str], *, profile: bool = False) -> list[dict[str, Any]]:
    """The raw latent of the same weights run other ways, against the loaded ``encoder.jit``
    (``profile``: with each one's kernels by kind, :func:`_common.kernel_profile`)."""
    device = video.device
    clip = video.to(dtype)
    plain = torch.jit.load(str(folder / "encoder.jit"), map_location=device).eval()
    with torch.no_grad():
        reference = plain(clip)[0].float()
    rows: list[dict[str, Any]] = []
    for name in names:
        start = time.perf_counter()
        module = VARIANTS[name](plain, dtype)
        # the input's layout is part of the variant: channels-last variants get one
        source = (clip.to(memory_format=torch.channels_last_3d)
                  if name.endswith("-channels-last") else clip)

        def encode(m: Any = module, c: torch.Tensor = source) -> torch.Tensor:
            with torch.no_grad():
                return m(c)[0]

        for _ in range(2):
            encode()
        common.synchronize(device)
        setup = time.perf_counter() - start
        common.reset_peak(device)
        base = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
        median, times, latent = common.timed_median(encode, device, repeats)
        row = {"setting": name, "times_s": times, "median_s": median, "setup_s": setup,
               "peak_above_gib": common.peak_memory(device).get("peak_allocated_gib", 0.0) - base,
               "rel_l2_vs_jit": ((latent.float() - reference).norm() / reference.norm()).item()}
        print(f"{name}: {median:.3f} s (setup {setup:.0f} s), rel L2 vs the jit "
              f"{row['rel_l2_vs_jit']:.1e}", flush=True)
        if profile:
            row["profile"] = common.kernel_profile(encode, device)
            common.print_profile(row["profile"])
        rows.append(row)
        del module, latent
        empty_cache(device)
    return rows


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--height", type=int, default=704)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variants", default="",
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--attention", choices=cosmos_tokenizer.ATTENTION_FORMS,
                        default="released", help="the attention form of the traced stand-in")
    parser.add_argument("--profile", action="store_true",
                        help="the default encode's and each variant's GPU kernels by kind")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help="TorchScript settings to time (default: all)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # CPUs lack bf16 pools
    result: dict[str, Any] = {"benchmark": "tokenizer_encode", "device": common.device_name(device),
                              "torch": torch.__version__, "date": common.now(),
                              "command": " ".join(sys.argv), "settings": []}
    folder = Path(tempfile.mkdtemp(prefix="ctrlpost-tokenizer-")) / "cv8x8x8"
    unknown = set(filter(None, args.variants.split(","))) - set(VARIANTS)
    if unknown:
        parser.error(f"--variants: unknown {', '.join(sorted(unknown))}")
    result["tokenizer"] = cosmos_tokenizer.write_tokenizer(folder, device=device, dtype=dtype,
                                                           attention=args.attention)
    empty_cache(device)
    tokenizer = VideoTokenizer.from_files(folder, device=device, dtype=dtype,
                                          latent_channels=cosmos_tokenizer.LATENT_CHANNELS,
                                          pixel_chunk_frames=args.frames,
                                          latent_chunk_frames=1 + (args.frames - 1) // 8)
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (1, 3, args.frames, args.height, args.width)
    video = torch.rand(shape, generator=gen, device=device) * 2 - 1
    reference = None
    for setting in args.settings.split(","):
        torch.backends.cudnn.benchmark = "cudnn-benchmark" in setting
        clip = (video.to(memory_format=torch.channels_last_3d) if "channels-last" in setting
                else video)
        for _ in range(2):
            tokenizer.encode(clip)
        base = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
        common.reset_peak(device)
        median, times, latent = common.timed_median(partial(tokenizer.encode, clip), device,
                                             args.repeats)
        peak = common.peak_memory(device).get("peak_allocated_gib", 0.0) - base
        row = {"setting": setting, "times_s": times, "median_s": median, "peak_above_gib": peak}
        if reference is None:
            reference = latent
        else:
            row["rel_l2_vs_default"] = ((latent - reference).norm() / reference.norm()).item()
        result["settings"].append(row)
        print(f"{setting}: {row['median_s']:.3f} s, peak +{peak:.1f} GiB"
              + (f", rel L2 vs default {row['rel_l2_vs_default']:.1e}"
                 if "rel_l2_vs_default" in row else ""), flush=True)
        common.write_json(result, args.out)
    torch.backends.cudnn.benchmark = False
    if args.profile:
        result["profile"] = common.kernel_profile(partial(tokenizer.encode, video), device)
        common.print_profile(result["profile"])
        common.write_json(result, args.out)
    del tokenizer
    empty_cache(device)
    if args.variants:
        result["variants"] = variant_rows(folder, video, dtype, args.repeats,
                                          args.variants.split(","), profile=args.profile)
        common.write_json(result, args.out)
    empty_cache(device)
    result["flops"] = flops = encode_flops(video, dtype)
    best = min(row["median_s"] for row in result["settings"] + result.get("variants", []))
    result["ceiling"] = common.matmul_ceiling(device)
    print(f"encode: {flops / 1e12:.1f} TFLOP, best {flops / best / 1e12:.0f} TFLOP/s, "
          f"matmul {result['ceiling']['tflops_median']:.0f}", flush=True)
    common.write_json(result, args.out)


if __name__ == "__main__":
    main()
