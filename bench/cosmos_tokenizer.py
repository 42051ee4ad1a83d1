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

The attention blocks are computed as NVIDIA's tokenizer code computes them (``--attention
released``, the default): the score matrix materialised by batched products and a softmax,
with the temporal block's causal mask built from the scores. That is the graph the released
``encoder.jit`` holds; diffusers' port calls ``scaled_dot_product_attention`` instead, which is
cheaper, so a stand-in traced from it would under-state the released encode's time and memory
(``--attention diffusers`` keeps it, for comparison).

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


def _frames_to_batch(tensor: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, H, W]`` → ``[B·T, C, H·W]``: one spatial attention per frame."""
    batch, channels, frames, height, width = tensor.shape
    return tensor.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height * width)


def _positions_to_batch(tensor: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, H, W]`` → ``[B·H·W, C, T]``: one temporal attention per position."""
    batch, channels, frames, height, width = tensor.shape
    return tensor.permute(0, 3, 4, 1, 2).reshape(batch * height * width, channels, frames)


class ReleasedSpatialAttention:
    """A diffusers attention processor computing the spatial attention the way the released
    tokenizer's code does: the score matrix of each frame made by a batched product of the
    transposed queries and the keys, scaled, soft-maxed, then multiplied into the values
    (materialised, where diffusers calls ``scaled_dot_product_attention``)."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, channels, frames, height, width = hidden_states.shape
        normed = attn.norm(hidden_states)
        query = _frames_to_batch(attn.to_q(normed)).permute(0, 2, 1)  # [B·T, HW, C]
        key = _frames_to_batch(attn.to_k(normed))  # [B·T, C, HW]
        value = _frames_to_batch(attn.to_v(normed))
        scores = torch.bmm(query, key) * (int(channels) ** -0.5)
        weights = torch.softmax(scores, dim=2)
        attended = torch.bmm(value, weights.permute(0, 2, 1))  # [B·T, C, HW]
        attended = attended.reshape(batch, frames, channels, height, width).permute(0, 2, 1, 3, 4)
        return hidden_states + attn.to_out[0](attended)


class ReleasedTemporalAttention:
    """The temporal counterpart of :class:`ReleasedSpatialAttention`: per position, scores
    over the frames, the causal mask made from the scores (lower triangle of ones, the rest
    filled with -inf), soft-maxed and multiplied into the values (the mask argument diffusers
    passes is not used: the released block builds its own)."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, channels, frames, height, width = hidden_states.shape
        normed = attn.norm(hidden_states)
        query = _positions_to_batch(attn.to_q(normed)).permute(0, 2, 1)  # [B·H·W, T, C]
        key = _positions_to_batch(attn.to_k(normed)).permute(0, 2, 1)
        value = _positions_to_batch(attn.to_v(normed)).permute(0, 2, 1)
        scores = torch.bmm(query, key.permute(0, 2, 1)) * (int(channels) ** -0.5)
        causal = torch.tril(torch.ones_like(scores))
        scores = scores.masked_fill(causal == 0, float("-inf"))
        attended = torch.bmm(torch.softmax(scores, dim=2), value)  # [B·H·W, T, C]
        attended = attended.reshape(batch, height, width, frames, channels).permute(0, 4, 3, 1, 2)
        return hidden_states + attn.to_out[0](attended)


ATTENTION_FORMS = ("released", "diffusers")
"""How the stand-in computes its attention blocks: as the released files do (materialised
scores, the default: what ``encoder.jit`` runs) or with diffusers' own processors (fused)."""


def build_autoencoder(*, tiny: bool, seed: int, device: torch.device,
                      dtype: torch.dtype, attention: str = "released") -> Any:
    """diffusers' ``AutoencoderKLCosmos`` at the CV8x8x8 (or tiny) config, random weights
    (the class's own initialisation, drawn from ``seed``), frozen, in eval mode; its attention
    blocks computed in the ``attention`` form (:data:`ATTENTION_FORMS`)."""
    from diffusers import AutoencoderKLCosmos
    from diffusers.models.autoencoders import autoencoder_kl_cosmos as cosmos
    from diffusers.utils import logging as diffusers_logging

    if attention not in ATTENTION_FORMS:
        raise ValueError(f"attention form {attention!r}: one of {', '.join(ATTENTION_FORMS)}")
    # Its `.to(dtype)` warns that it keeps no module in float32 (an empty list): nothing to do.
    diffusers_logging.set_verbosity_error()
    torch.manual_seed(seed)
    model: Any = AutoencoderKLCosmos(**(TINY if tiny else CV8X8X8))
    if attention == "released":
        released = {cosmos.CosmosSpatialAttentionProcessor2_0: ReleasedSpatialAttention(),
                    cosmos.CosmosTemporalAttentionProcessor2_0: ReleasedTemporalAttention()}
        for module in model.modules():
            if isinstance(module, cosmos.CosmosCausalAttention):
                module.processor = released[type(module.processor)]
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
                    trace_shape: tuple[int, int, int] = TRACE_SHAPE,
                    attention: str = "released") -> dict[str, Any]:
    """Write ``encoder.jit``, ``decoder.jit`` and ``mean_std.pt`` into ``folder`` (created);
    returns what was written (config, parameter counts, seconds)."""
    device = torch.device(device)
    start = time.perf_counter()
    autoencoder = build_autoencoder(tiny=tiny, seed=seed, device=device, dtype=dtype,
                                    attention=attention)
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
        "attention": attention, "trace_shape": list(trace_shape),
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
    # diffusers' own processors: the check covers the released attention form too
    autoencoder = build_autoencoder(tiny=tiny, seed=seed, device=device, dtype=dtype,
                                    attention="diffusers")
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
    parser.add_argument("--attention", choices=ATTENTION_FORMS, default="released",
                        help="attention as the released files compute it (materialised scores) "
                             "or with diffusers' fused processors")
    parser.add_argument("--check", action="store_true",
                        help="load it through VideoTokenizer.from_files and encode a clip")
    args = parser.parse_args()
    dtype = DTYPES[args.dtype]
    written = write_tokenizer(args.out, tiny=args.tiny, device=args.device, dtype=dtype,
                              seed=args.seed, attention=args.attention)
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
