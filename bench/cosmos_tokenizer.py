"""A random-weight Cosmos CV8x8x8 video tokenizer, written as the released files.

The released Cosmos-Tokenize1-CV8x8x8-720p cannot be fetched on the GPU machines. The work of
an encode depends on the architecture, not on the weights, so this script builds diffusers'
public implementation of it, ``AutoencoderKLCosmos``, with random weights at the CV8x8x8
configuration (the values of diffusers' ``scripts/convert_cosmos_to_diffusers.py``,
``VAE_CONFIGS["CV8x8x8-1.0"]``, which are also the class's defaults), and writes it with the
released files' interface, so that ``ctrlpost.models.tokenizer.VideoTokenizer.from_files``
loads it unchanged:

* ``encoder.jit``: TorchScript; video ``[B, 3, 1 + 8k, H, W]`` in [-1, 1] →
  ``(latent [B, 16, 1 + k, H/8, W/8], (tensor([0.]), tensor([0.])))``: the released encoder is
  ``encoder → quant_conv → IdentityDistribution``, whose output is the latent and a dummy
  ``(mean, logvar)`` pair;
* ``decoder.jit``: TorchScript; latent → video: ``post_quant_conv → decoder``;
* ``mean_std.pt``: ``(mean, std)``, 16 channels × 16 latent frames (the CV8x8x8-1.0 statistics
  that diffusers ships as the class defaults).

Both modules are traced (diffusers' code is not scriptable) in the dtype and on the device they
will run with: tracing bakes the filter casts of the Haar patcher and, in the decoder, the
device. ``--check`` loads the folder through ``VideoTokenizer.from_files`` and encodes a clip
of another shape than the traced one, against diffusers' own eager ``encode``.

Usage::

    python bench/cosmos_tokenizer.py OUT_DIR --device cuda            # CV8x8x8, bf16
    python bench/cosmos_tokenizer.py OUT_DIR --tiny --device cpu --dtype fp32 --check

Needs ``diffusers`` (bench only, not a dependency of ctrlpost).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

common.ensure_ctrlpost_importable()

from ctrlpost.models.tokenizer import (  # noqa: E402
    DECODER_FILE,
    ENCODER_FILE,
    MEAN_STD_FILE,
    VideoTokenizer,
    torchscript_deprecation_silenced,
)

LATENT_CHANNELS = 16
STAT_FRAMES = 16
"""Latent frames of the statistics in ``mean_std.pt`` (one 121-frame chunk)."""

CV8X8X8: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": LATENT_CHANNELS,
    "encoder_block_out_channels": (128, 256, 512, 512),
    "decode_block_out_channels": (256, 512, 512, 512),
    "attention_resolutions": (32,), "resolution": 1024, "num_layers": 2, "patch_size": 4,
    "patch_type": "haar", "spatial_compression_ratio": 8, "temporal_compression_ratio": 8,
}
"""diffusers' CV8x8x8-1.0 configuration (its conversion script's ``VAE_CONFIGS``)."""

TINY: dict[str, Any] = {
    **CV8X8X8,
    "encoder_block_out_channels": (8, 16, 32, 32),
    "decode_block_out_channels": (16, 32, 32, 32),
}
"""The same graph with 16x fewer channels: every layer kind, CPU-sized (smoke tests)."""

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
TRACE_SHAPE = (17, 64, 64)
"""Frames, height, width of the clip the modules are traced on (small: tracing runs them)."""
CHECK_SHAPE = (25, 48, 80)
"""Another clip shape, for ``--check``: the traced graph must not have baked the trace's."""


class ReleasedEncoder(nn.Module):
    """What ``encoder.jit`` computes: ``encoder → quant_conv → IdentityDistribution``."""

    def __init__(self, autoencoder: Any) -> None:
        super().__init__()
        self.encoder = autoencoder.encoder
        self.quant_conv = autoencoder.quant_conv

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor,
                                                                          torch.Tensor]]:
        latent = self.quant_conv(self.encoder(video))
        zero = latent.new_zeros(1)  # the identity distribution's dummy (mean, logvar)
        return latent, (zero, zero)


class ReleasedDecoder(nn.Module):
    """What ``decoder.jit`` computes: ``post_quant_conv → decoder``."""

    def __init__(self, autoencoder: Any) -> None:
        super().__init__()
        self.post_quant_conv = autoencoder.post_quant_conv
        self.decoder = autoencoder.decoder

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(latent))


def build_autoencoder(*, tiny: bool, seed: int, device: torch.device,
                      dtype: torch.dtype) -> Any:
    """diffusers' ``AutoencoderKLCosmos`` at the CV8x8x8 (or tiny) config, random weights
    (the class's own initialisation, drawn from ``seed``), frozen, in eval mode."""
    from diffusers import AutoencoderKLCosmos
    from diffusers.utils import logging as diffusers_logging

    # Its `.to(dtype)` warns that it keeps no module in float32 (an empty list): nothing to do.
    diffusers_logging.set_verbosity_error()
    torch.manual_seed(seed)
    model: Any = AutoencoderKLCosmos(**(TINY if tiny else CV8X8X8))
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def statistics() -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) float32 ``[16, 16]``: diffusers' CV8x8x8-1.0 latent statistics, channel-major
    (each channel's 16 latent-frame positions in a row), as ``mean_std.pt`` is read."""
    from diffusers.models.autoencoders import autoencoder_kl_cosmos as cosmos

    mean = torch.tensor(cosmos.LATENTS_MEAN, dtype=torch.float32)
    std = torch.tensor(cosmos.LATENTS_STD, dtype=torch.float32)
    return mean.reshape(LATENT_CHANNELS, STAT_FRAMES), std.reshape(LATENT_CHANNELS, STAT_FRAMES)


def write_tokenizer(folder: Path, *, tiny: bool = False, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                    trace_shape: tuple[int, int, int] = TRACE_SHAPE) -> dict[str, Any]:
    """Write ``encoder.jit``, ``decoder.jit`` and ``mean_std.pt`` into ``folder`` (created);
    returns what was written (config, parameter counts, seconds)."""
    device = torch.device(device)
    start = time.perf_counter()
    autoencoder = build_autoencoder(tiny=tiny, seed=seed, device=device, dtype=dtype)
    encoder, decoder = ReleasedEncoder(autoencoder).eval(), ReleasedDecoder(autoencoder).eval()
    frames, height, width = trace_shape
    gen = torch.Generator(device=device).manual_seed(seed)
    video = torch.rand((1, 3, frames, height, width), generator=gen, device=device) * 2 - 1
    video = video.to(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), torchscript_deprecation_silenced(), warnings.catch_warnings():
        # The tracer warns where diffusers turns a value into a Python constant: the Haar
        # filter's length and the upsampler's time factor (2 for any clip of over one latent
        # frame). Both are fixed by the configuration; --check runs another clip shape.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced_encoder = torch.jit.trace(encoder, video, check_trace=False)
        latent = traced_encoder(video)[0]
        traced_decoder = torch.jit.trace(decoder, latent, check_trace=False)
        torch.jit.save(traced_encoder, str(folder / ENCODER_FILE))
        torch.jit.save(traced_decoder, str(folder / DECODER_FILE))
    torch.save(statistics(), folder / MEAN_STD_FILE)
    return {
        "folder": str(folder), "config": "tiny" if tiny else "CV8x8x8",
        "dtype": str(dtype).removeprefix("torch."), "device": str(device), "seed": seed,
        "trace_shape": list(trace_shape),
        "encoder_params": sum(p.numel() for p in encoder.parameters()),
        "decoder_params": sum(p.numel() for p in decoder.parameters()),
        "write_s": time.perf_counter() - start,
    }


def check_tokenizer(folder: Path, *, tiny: bool, device: torch.device | str,
                    dtype: torch.dtype, seed: int = 0,
                    shape: tuple[int, int, int] = CHECK_SHAPE) -> dict[str, Any]:
    """Load ``folder`` with ``VideoTokenizer.from_files`` (as the engine does) and encode a
    random clip of ``shape`` (frames, height, width); compare the raw latent with diffusers'
    eager ``encode`` of the same weights (``rel_l2_vs_eager``), and decode it back."""
    device = torch.device(device)
    frames, height, width = shape
    tokenizer = VideoTokenizer.from_files(
        folder, device=device, dtype=dtype, pixel_chunk_frames=frames,
        latent_chunk_frames=1 + (frames - 1) // 8, latent_channels=LATENT_CHANNELS)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    video = (torch.rand((1, 3, frames, height, width), generator=gen, device=device) * 2 - 1)
    start = time.perf_counter()
    latents = tokenizer.encode(video)
    common.synchronize(device)
    encode_s = time.perf_counter() - start
    decoded = tokenizer.decode(latents)
    raw = latents * tokenizer.std_B_C_T_1_1 + tokenizer.mean_B_C_T_1_1
    autoencoder = build_autoencoder(tiny=tiny, seed=seed, device=device, dtype=dtype)
    with torch.no_grad():
        eager = autoencoder.encode(video.to(dtype)).latent_dist.mode().float()
    error = ((raw - eager).norm() / eager.norm()).item()
    return {"finite": bool(torch.isfinite(latents).all()), "clip": list(video.shape),
            "latent": list(latents.shape),
            "decoded": list(decoded.shape), "rel_l2_vs_eager": error, "encode_s": encode_s,
            "raw_latent_std": raw.std().item(), "normalised_latent_std": latents.std().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write the three files into")
    parser.add_argument("--tiny", action="store_true", help="16x fewer channels (CPU smoke)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                        help="the dtype the engine will run it in (its compute dtype)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true",
                        help="load it through VideoTokenizer.from_files and encode a clip")
    args = parser.parse_args()
    dtype = DTYPES[args.dtype]
    written = write_tokenizer(args.out, tiny=args.tiny, device=args.device, dtype=dtype,
                              seed=args.seed)
    print(written)
    if args.check:
        check = check_tokenizer(args.out, tiny=args.tiny, device=args.device, dtype=dtype,
                                seed=args.seed)
        print(check)
        tolerance = 1e-5 if dtype == torch.float32 else 2e-2
        if not check["finite"] or check["rel_l2_vs_eager"] > tolerance:
            raise SystemExit(f"{args.out}: the traced encoder disagrees with diffusers' eager "
                             f"encode at {check['clip']} (rel. L2 {check['rel_l2_vs_eager']:.3g}, "
                             f"tolerance {tolerance:g}) or gives non-finite latents")


if __name__ == "__main__":
    main()
