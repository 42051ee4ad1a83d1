"""Input-side layers of the DiT: patch embedding, noise embedding, positions and RMSNorm.

Module and parameter names (``proj.1``, ``t_embedder.1.linear_1``, ``pos_emb_h``, ``seq``) are the
ones of the released checkpoints, so ``state_dict()`` needs no renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops.layers.torch import Rearrange
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learnable gain, computed in float32 like TE's kernel."""

    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def init_weights(self) -> None:
        """Reset the gain to one."""
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise the last dimension of ``x``."""
        x_f32 = x.float()
        x_f32 = x_f32 * torch.rsqrt(x_f32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x_f32 * self.weight.float()).to(x.dtype)


class PatchEmbed(nn.Module):
    """Cut a video into (t, h, w) patches and project each to the model width.

    The flattening order inside a patch is ``(c r m n)``: channel slowest, then time, row, column.
    """

    def __init__(
        self, *, in_channels: int, patch_spatial: int, patch_temporal: int, out_channels: int
    ) -> None:
        super().__init__()
        volume = patch_temporal * patch_spatial**2
        self.proj = nn.Sequential(
            Rearrange(
                "b c (t r) (h m) (w n) -> b t h w (c r m n)",
                r=patch_temporal,
                m=patch_spatial,
                n=patch_spatial,
            ),
            nn.Linear(in_channels * volume, out_channels, bias=False),
        )

    def forward(self, x_B_C_T_H_W: Tensor) -> Tensor:
        """Return tokens laid out ``x_B_T_H_W_D`` (token grid, not yet flattened)."""
        return self.proj(x_B_C_T_H_W)


def sinusoidal_embedding(c_noise: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of a scalar per entry: ``[..., dim]``, cosines first, then sines."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=c_noise.device)
    angles = c_noise.float()[..., None] * torch.exp(exponent / half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepMLP(nn.Module):
    """``linear_1 → SiLU → linear_2``: turns the sinusoid into the shared AdaLN-LoRA vector."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim, dim, bias=False)
        self.activation = nn.SiLU()
        self.linear_2 = nn.Linear(dim, out_dim, bias=False)

    def forward(self, sinusoid: Tensor) -> Tensor:
        """Map ``[..., dim]`` features to ``[..., out_dim]``."""
        return self.linear_2(self.activation(self.linear_1(sinusoid)))


class TimestepEmbedder(nn.Module):
    """Noise-level embedding. Child ``"1"`` keeps the released name ``t_embedder.1.*``.

    Returns the raw sinusoid (the conditioning vector, normalised later by ``affline_norm``) and
    the MLP output ``adaln_lora`` that every AdaLN modulation adds to its own output.
    """

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.add_module("1", TimestepMLP(dim, out_dim))

    def forward(self, c_noise_B_T: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(emb_B_T_D, adaln_lora_B_T_3D)`` for ``c_noise`` of shape ``[B, T]``."""
        mlp = self._modules["1"]
        assert isinstance(mlp, TimestepMLP)
        sinusoid = sinusoidal_embedding(c_noise_B_T, self.dim).to(mlp.linear_1.weight.dtype)
        return sinusoid, mlp(sinusoid)


def rotate_half(x: Tensor) -> Tensor:
    """Map ``[a, b]`` (halves of the last dim) to ``[-b, a]``: the non-interleaved convention."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rope(x_B_L_H_Dh: Tensor, rope_2_L_Dh: Tensor) -> Tensor:
    """Rotate queries or keys by the angles whose (cos, sin) are stacked in ``rope_2_L_Dh``."""
    cos_L_1_Dh, sin_L_1_Dh = rope_2_L_Dh[0, :, None], rope_2_L_Dh[1, :, None]
    x_f32 = x_B_L_H_Dh.float()
    return (x_f32 * cos_L_1_Dh + rotate_half(x_f32) * sin_L_1_Dh).to(x_B_L_H_Dh.dtype)


def rope_theta(ratio: float, dim: int) -> float:
    """NTK-scaled base of one axis: ``10000 · ratio^(dim / (dim − 2))``."""
    return 10000.0 * ratio ** (dim / (dim - 2))


class RoPE3D(nn.Module):
    """Rotary angles over a (t, h, w) token grid, the temporal axis scaled by frame rate.

    Only ``seq`` (``arange(max grid side)``) is stored, because the released checkpoints carry it;
    the frequencies are recomputed per call so a meta-built model cannot hold stale buffers.
    """

    seq: Tensor

    def __init__(
        self,
        *,
        dims_thw: tuple[int, int, int],
        ratios_thw: tuple[float, float, float],
        max_tokens_thw: tuple[int, int, int],
        base_fps: float,
    ) -> None:
        super().__init__()
        self.dims_thw = dims_thw
        self.thetas_thw = tuple(rope_theta(r, d) for r, d in zip(ratios_thw, dims_thw, strict=True))
        self.base_fps = base_fps
        self.register_buffer("seq", torch.arange(max(max_tokens_thw), dtype=torch.float32))

    def init_weights(self) -> None:
        """Refill ``seq`` (needed after ``to_empty``)."""
        with torch.no_grad():
            self.seq.copy_(torch.arange(self.seq.numel(), dtype=torch.float32))

    def frequencies(self, axis: int) -> Tensor:
        """Inverse wavelengths ``1/θ^(2i/dim)`` of one axis (0 = t, 1 = h, 2 = w)."""
        dim = self.dims_thw[axis]
        exponents = torch.arange(0, dim, 2, device=self.seq.device)[: dim // 2].float() / dim
        return 1.0 / (self.thetas_thw[axis] ** exponents)

    def forward(self, t: int, h: int, w: int, fps_B: Tensor | None = None) -> Tensor:
        """Return ``rope_2_L_Dh``: cos and sin (float32) for the ``t·h·w`` tokens, t-major.

        Temporal positions are ``i · base_fps / fps`` using the first sample's fps; the reference
        assumes one frame rate per batch.
        """
        positions = torch.arange(max(t, h, w), dtype=torch.float32, device=self.seq.device)
        pos_t = positions[:t]
        if fps_B is not None:
            pos_t = pos_t / fps_B[:1].to(pos_t) * self.base_fps
        half_t = torch.outer(pos_t, self.frequencies(0))
        half_h = torch.outer(positions[:h], self.frequencies(1))
        half_w = torch.outer(positions[:w], self.frequencies(2))
        half_T_H_W_D = torch.cat(
            [
                half_t[:, None, None].expand(t, h, w, -1),
                half_h[None, :, None].expand(t, h, w, -1),
                half_w[None, None, :].expand(t, h, w, -1),
            ],
            dim=-1,
        )
        angles_L_Dh = torch.cat([half_T_H_W_D, half_T_H_W_D], dim=-1).flatten(0, 2)
        return torch.stack([angles_L_Dh.cos(), angles_L_Dh.sin()])


class LearnablePosEmb(nn.Module):
    """Per-axis learnable absolute positions, summed and normalised to unit RMS per token."""

    def __init__(self, *, dim: int, max_tokens_thw: tuple[int, int, int], eps: float) -> None:
        super().__init__()
        max_t, max_h, max_w = max_tokens_thw
        self.eps = eps
        self.pos_emb_h = nn.Parameter(torch.empty(max_h, dim))
        self.pos_emb_w = nn.Parameter(torch.empty(max_w, dim))
        self.pos_emb_t = nn.Parameter(torch.empty(max_t, dim))
        self.init_weights()

    def init_weights(self) -> None:
        """Truncated-normal tables (std 0.02), as the reference."""
        for table in (self.pos_emb_h, self.pos_emb_w, self.pos_emb_t):
            nn.init.trunc_normal_(table, std=0.02)

    def forward(self, t: int, h: int, w: int) -> Tensor:
        """Return ``pos_L_D`` for a ``t × h × w`` grid (t-major)."""
        emb_T_H_W_D = (
            self.pos_emb_t[:t, None, None]
            + self.pos_emb_h[None, :h, None]
            + self.pos_emb_w[None, None, :w]
        )
        emb_f32 = emb_T_H_W_D.float()
        rms = torch.linalg.vector_norm(emb_f32, dim=-1, keepdim=True) / math.sqrt(emb_f32.shape[-1])
        return (emb_f32 / (self.eps + rms)).to(emb_T_H_W_D.dtype).flatten(0, 2)


def resize_padding_mask(padding_mask_B_1_H_W: Tensor, size_hw: tuple[int, int]) -> Tensor:
    """Nearest-resize a pixel padding mask to the latent grid (as torchvision's NEAREST does)."""
    return F.interpolate(padding_mask_B_1_H_W.float(), size=size_hw, mode="nearest")
