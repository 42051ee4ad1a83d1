"""Wrapper of the Cosmos video tokenizer TorchScript files (``encoder.jit``, ``decoder.jit``,
``mean_std.pt``), e.g. Cosmos-Tokenize1-CV8x8x8-720p (docs/reference.md#tokenizer).

The tokenizer is causal in time and works on fixed chunks: 121 pixel frames ↔ 16 latent frames,
8× spatial compression, 16 latent channels. Latents are normalised per channel *and* per latent
frame position inside a chunk. They are NOT multiplied by σ_data here: the diffusion side does
that (``ctrlpost.diffusion.x0_from_latent``), exactly as the reference model does outside its
tokenizer.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from einops import rearrange

from ctrlpost.errors import WeightsError
from ctrlpost.tokenizer_geometry import COMPILED_ENCODE_SCORE_BUDGET, SPATIAL_COMPRESSION

ENCODER_FILE = "encoder.jit"
DECODER_FILE = "decoder.jit"
MEAN_STD_FILE = "mean_std.pt"


@dataclass(frozen=True, kw_only=True)
class TokenizerFiles:
    """The three files of a tokenizer checkpoint."""

    encoder: Path
    decoder: Path
    mean_std: Path

    @classmethod
    def in_directory(cls, directory: str | Path) -> TokenizerFiles:
        """The standard file names inside ``directory``."""
        root = Path(directory)
        return cls(
            encoder=root / ENCODER_FILE, decoder=root / DECODER_FILE, mean_std=root / MEAN_STD_FILE
        )

    def check(self) -> None:
        """Raise ``WeightsError`` naming every missing file."""
        missing = [str(p) for p in (self.encoder, self.decoder, self.mean_std) if not p.is_file()]
        if missing:
            raise WeightsError(
                f"tokenizer file(s) not found: {', '.join(missing)}",
                hint="download them with `ctrlpost fetch-weights`",
            )


def load_mean_std(
    path: str | Path, *, latent_channels: int, latent_chunk_frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalisation statistics as two float32 tensors [1, C, T_lat, 1, 1].

    ``mean_std.pt`` holds a tuple (mean, std); each is viewed as [C, −1] (one column per latent
    frame position) and its first ``latent_chunk_frames`` columns are kept.
    """
    stats = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(stats, (tuple, list)) or len(stats) != 2:
        raise WeightsError(f"{path}: expected a (mean, std) pair, got {type(stats).__name__}")
    out = []
    for name, tensor in zip(("mean", "std"), stats, strict=True):
        per_frame = tensor.float().reshape(latent_channels, -1)
        if per_frame.shape[1] < latent_chunk_frames:
            raise WeightsError(
                f"{path}: {name} has {per_frame.shape[1]} latent-frame columns, "
                f"fewer than latent_chunk_frames={latent_chunk_frames}"
            )
        out.append(per_frame[:, :latent_chunk_frames].reshape(1, latent_channels, -1, 1, 1))
    return out[0], out[1]


class VideoTokenizer:
    """Encode videos [B, 3, T, H, W] in [−1, 1] to normalised latents, and back.

    Built with ``from_files``. Frozen and gradient-free: both directions run under
    ``torch.no_grad`` and return float32 tensors on the tokenizer's device.
    """

    def __init__(
        self,
        *,
        encoder: Callable[[torch.Tensor], Any],
        decoder: torch.jit.ScriptModule,
        mean_B_C_T_1_1: torch.Tensor,
        std_B_C_T_1_1: torch.Tensor,
        device: torch.device,
        dtype: torch.dtype,
        pixel_chunk_frames: int,
        latent_chunk_frames: int,
        spatial_compression: int,
        max_encode_batch: int,
        max_decode_batch: int,
    ) -> None:
        causal_ok = (
            pixel_chunk_frames == latent_chunk_frames == 1
            if latent_chunk_frames == 1
            else latent_chunk_frames > 1
            and pixel_chunk_frames > latent_chunk_frames
            and (pixel_chunk_frames - 1) % (latent_chunk_frames - 1) == 0
        )
        if not causal_ok:
            raise ValueError(
                f"pixel_chunk_frames={pixel_chunk_frames} is not 1 + k·(latent_chunk_frames − 1) "
                f"for latent_chunk_frames={latent_chunk_frames}"
            )
        if min(max_encode_batch, max_decode_batch, spatial_compression) < 1:
            raise ValueError("max_encode_batch, max_decode_batch, spatial_compression must be >= 1")
        self.encoder = encoder
        self.decoder = decoder
        self.mean_B_C_T_1_1 = mean_B_C_T_1_1.to(device)
        self.std_B_C_T_1_1 = std_B_C_T_1_1.to(device)
        self.device = device
        self.dtype = dtype
        self.pixel_chunk_frames = pixel_chunk_frames
        self.latent_chunk_frames = latent_chunk_frames
        self._spatial = spatial_compression
        self.max_encode_batch = max_encode_batch
        self.max_decode_batch = max_decode_batch

    @classmethod
    def from_files(
        cls,
        directory: str | Path | None = None,
        *,
        files: TokenizerFiles | None = None,
        device: torch.device | str,
        dtype: torch.dtype = torch.bfloat16,
        pixel_chunk_frames: int = 121,
        latent_chunk_frames: int = 16,
        latent_channels: int = 16,
        spatial_compression: int = SPATIAL_COMPRESSION,
        max_encode_batch: int = 8,
        max_decode_batch: int = 4,
        compile_encoder: bool = False,
    ) -> VideoTokenizer:
        """Load ``encoder.jit``, ``decoder.jit`` and ``mean_std.pt`` from ``directory``
        (or from explicit ``files``), frozen, in eval mode and cast to ``dtype``;
        ``compile_encoder``: the encoder's traced graph replayed as aten calls under
        ``torch.compile``, its materialised attention fused (:mod:`ctrlpost.models.jit_replay`;
        compiled on first use, once per clip shape)."""
        if (directory is None) == (files is None):
            raise ValueError("pass exactly one of directory and files=")
        if files is None:
            assert directory is not None
            files = TokenizerFiles.in_directory(directory)
        files.check()
        device = torch.device(device)
        mean, std = load_mean_std(
            files.mean_std, latent_channels=latent_channels, latent_chunk_frames=latent_chunk_frames
        )
        script = _load_frozen(files.encoder, device=device, dtype=dtype)
        return cls(
            encoder=_compiled(script, files.encoder) if compile_encoder else script,
            decoder=_load_frozen(files.decoder, device=device, dtype=dtype),
            mean_B_C_T_1_1=mean,
            std_B_C_T_1_1=std,
            device=device,
            dtype=dtype,
            pixel_chunk_frames=pixel_chunk_frames,
            latent_chunk_frames=latent_chunk_frames,
            spatial_compression=spatial_compression,
            max_encode_batch=max_encode_batch,
            max_decode_batch=max_decode_batch,
        )

    @property
    def latent_channels(self) -> int:
        """Channels of a latent (16 for the Cosmos CV tokenizers)."""
        return int(self.mean_B_C_T_1_1.shape[1])

    @property
    def spatial_compression_factor(self) -> int:
        """Pixels per latent along height and along width."""
        return self._spatial

    @property
    def temporal_compression_factor(self) -> int:
        """Pixel frames per latent frame after the first (causal: frame 0 maps to latent 0)."""
        if self.latent_chunk_frames == 1:
            return 1
        return (self.pixel_chunk_frames - 1) // (self.latent_chunk_frames - 1)

    def latent_frames(self, pixel_frames: int) -> int:
        """Latent frames of a clip of ``pixel_frames`` frames (a multiple of the pixel chunk)."""
        _check_multiple(pixel_frames, self.pixel_chunk_frames, what="pixel frames", op="encode")
        return pixel_frames // self.pixel_chunk_frames * self.latent_chunk_frames

    @torch.no_grad()
    def encode(self, video_B_3_T_H_W: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, T_lat, H/8, W/8] (float32) of a video in [−1, 1]."""
        batch, _, frames, height, width = video_B_3_T_H_W.shape
        _check_multiple(frames, self.pixel_chunk_frames, what="pixel frames", op="encode")
        _check_multiple(height, self._spatial, what="pixel rows", op="encode")
        _check_multiple(width, self._spatial, what="pixel columns", op="encode")
        chunks = rearrange(
            video_B_3_T_H_W.to(self.device, self.dtype),
            "b c (n t) h w -> (b n) c t h w",
            t=self.pixel_chunk_frames,
        )
        raw = _run_batched(self.encoder, chunks, self.max_encode_batch)
        expected = (self.latent_channels, self.latent_chunk_frames)
        if tuple(raw.shape[1:3]) != expected:
            raise WeightsError(
                f"the encoder returned {tuple(raw.shape[1:3])} (channels, latent frames) per "
                f"chunk, expected {expected}",
                hint="pixel_chunk_frames/latent_chunk_frames/latent_channels must match the "
                "tokenizer checkpoint",
            )
        latents = (raw.float() - self.mean_B_C_T_1_1) / self.std_B_C_T_1_1
        return rearrange(latents, "(b n) c t h w -> b c (n t) h w", b=batch)

    @torch.no_grad()
    def decode(self, latent_B_C_T_H_W: torch.Tensor) -> torch.Tensor:
        """Video [B, 3, T, 8·H, 8·W] (float32, nominally in [−1, 1]; not clamped) of latents."""
        batch, _, frames, _, _ = latent_B_C_T_H_W.shape
        _check_multiple(frames, self.latent_chunk_frames, what="latent frames", op="decode")
        chunks = rearrange(
            latent_B_C_T_H_W.to(self.device, torch.float32),
            "b c (n t) h w -> (b n) c t h w",
            t=self.latent_chunk_frames,
        )
        raw = chunks * self.std_B_C_T_1_1 + self.mean_B_C_T_1_1
        video = _run_batched(self.decoder, raw.to(self.dtype), self.max_decode_batch)
        return rearrange(video.float(), "(b n) c t h w -> b c (n t) h w", b=batch)


@contextlib.contextmanager
def torchscript_deprecation_silenced() -> Iterator[None]:
    """Silence torch's "torch.jit.* is deprecated" warnings: the released tokenizer exists only
    as TorchScript, so there is nothing to migrate to."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        yield


def _check_multiple(value: int, chunk: int, *, what: str, op: str) -> None:
    if value > 0 and value % chunk == 0:
        return
    lower = value // chunk * chunk
    choices = " or ".join(str(n) for n in (lower, lower + chunk) if n > 0)
    raise ValueError(
        f"cannot {op} {value} {what}: the tokenizer needs a positive multiple of {chunk} "
        f"(e.g. {choices})"
    )


def _load_frozen(path: Path, *, device: torch.device, dtype: torch.dtype) -> torch.jit.ScriptModule:
    with torchscript_deprecation_silenced():
        module = torch.jit.load(str(path), map_location=device)
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return module.to(dtype)


COMPILE_HINT = "set parallel.compile_tokenizer = false (the encoder then runs as TorchScript)"


def encoder_compile_problem(path: Path) -> str | None:
    """Why ``path`` (an ``encoder.jit``) cannot be compiled, or None (loads it on the CPU)."""
    try:
        _replayed(_load_frozen(path, device=torch.device("cpu"), dtype=torch.float32), path)
    except WeightsError as exc:
        return exc.message
    return None


def _replayed(encoder: torch.jit.ScriptModule, path: Path) -> torch.nn.Module:
    from ctrlpost.models.jit_replay import GraphReplay, UnsupportedGraph

    try:
        # The released encoder's spatial attention materialises the score matrices of all
        # latent frames (5.9 GiB in bf16 for a 121-frame 720p clip, two copies alive at
        # once); sliced, a few frames' at a time. Not fused: at its head width (512) no fast
        # fused kernel applies, and the compiled fused form ran float32 products, twice as
        # slow as the slices' bf16 ones on an H100 (bench/NOTES.md). Its Haar steps are
        # depthwise 3-D convolutions, each a kernel of its own over the whole activation; as
        # sums of slices they fuse with their neighbours. Its other convolutions are
        # factorised 3-D ones, which the compiler leaves channels-first; as 2-D ones they run
        # channels-last. Compiled kernels round differently anyway, which is why the whole
        # replay is opt-in.
        return GraphReplay(encoder, fuse_attention=True,
                           attention_score_budget=COMPILED_ENCODE_SCORE_BUDGET,
                           depthwise_as_sums=True, convolutions_as_2d=True)
    except UnsupportedGraph as exc:
        raise WeightsError(f"{path}: its graph cannot be compiled: {exc}",
                           hint=COMPILE_HINT) from None


def _compiled(encoder: torch.jit.ScriptModule, path: Path) -> Callable[[torch.Tensor], Any]:
    # One graph per clip shape (buckets are few); a graph break would be a replay bug.
    return torch.compile(_replayed(encoder, path), dynamic=False, fullgraph=True)


def _run_batched(
    module: Callable[[torch.Tensor], Any], chunks: torch.Tensor, max_batch: int
) -> torch.Tensor:
    """Run ``module`` over at most ``max_batch`` chunks per call, bounding peak memory."""
    outputs = []
    for start in range(0, chunks.shape[0], max_batch):
        out = module(chunks[start : start + max_batch])
        # The released encoders return a tuple (latent, ...); the latent comes first.
        outputs.append(out[0] if isinstance(out, (tuple, list)) else out)
    return torch.cat(outputs, dim=0)
