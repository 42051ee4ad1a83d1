"""The base video DiT (``VideoExtendGeneralDIT`` of the reference), written batch-first.

Inputs are the EDM-preconditioned noisy latent (already multiplied by ``c_in``), the noise input
``c_noise`` and T5 text embeddings; the output is the raw network output ``F`` of EDM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from ctrlpost.models.args import DiTArgs
from ctrlpost.models.blocks import DiTBlock, FinalLayer, SubBlock
from ctrlpost.models.embeddings import (
    LearnablePosEmb,
    PatchEmbed,
    RMSNorm,
    RoPE3D,
    TimestepEmbedder,
    resize_padding_mask,
)


@dataclass(frozen=True)
class TokenInputs:
    """Everything the blocks of one stack consume, computed once per forward."""

    x_B_L_D: Tensor
    emb_B_T_D: Tensor
    adaln_lora_B_T_3D: Tensor
    text_B_M_C: Tensor
    rope_2_L_Dh: Tensor
    pos_L_D: Tensor
    grid_thw: tuple[int, int, int]


def with_masks(
    x_B_C_T_H_W: Tensor,
    condition_mask_B_1_T_H_W: Tensor | None,
    padding_mask_B_1_H_W: Tensor | None,
) -> Tensor:
    """Append the condition-frame mask and the (latent-resized) padding mask as channels.

    A missing mask means all zeros: no conditioning frames, no padded pixels.
    """
    batch, _, frames, height, width = x_B_C_T_H_W.shape
    if condition_mask_B_1_T_H_W is None:
        condition_mask_B_1_T_H_W = x_B_C_T_H_W.new_zeros(batch, 1, frames, height, width)
    return torch.cat(
        [
            x_B_C_T_H_W,
            condition_mask_B_1_T_H_W.to(x_B_C_T_H_W),
            padding_channel(x_B_C_T_H_W, padding_mask_B_1_H_W),
        ],
        dim=1,
    )


def padding_channel(x_B_C_T_H_W: Tensor, padding_mask_B_1_H_W: Tensor | None) -> Tensor:
    """The padding mask resized to the latent grid and repeated over frames: ``[B, 1, T, H, W]``."""
    batch, _, frames, height, width = x_B_C_T_H_W.shape
    if padding_mask_B_1_H_W is None:
        return x_B_C_T_H_W.new_zeros(batch, 1, frames, height, width)
    resized_B_1_H_W = resize_padding_mask(padding_mask_B_1_H_W, (height, width))
    return resized_B_1_H_W.to(x_B_C_T_H_W)[:, :, None].expand(-1, -1, frames, -1, -1)


class DiTTrunk(nn.Module):
    """Embedders, blocks and final layer shared by the base DiT and the control branch."""

    def __init__(self, args: DiTArgs) -> None:
        super().__init__()
        self.args = args
        dim = args.model_channels
        max_tokens = args.max_tokens_thw
        # Registration order follows the released parameter order.
        self.x_embedder = PatchEmbed(
            in_channels=args.in_channels + 1,
            patch_spatial=args.patch_spatial,
            patch_temporal=args.patch_temporal,
            out_channels=dim,
        )
        self.pos_embedder = RoPE3D(
            dims_thw=args.rope_dims_thw,
            ratios_thw=(args.rope_t_ratio, args.rope_h_ratio, args.rope_w_ratio),
            max_tokens_thw=max_tokens,
            base_fps=args.base_fps,
        )
        self.extra_pos_embedder = LearnablePosEmb(
            dim=dim, max_tokens_thw=max_tokens, eps=args.norm_eps
        )
        self.t_embedder = TimestepEmbedder(dim, 3 * dim)
        self.blocks = nn.ModuleDict({f"block{i}": DiTBlock(args) for i in range(args.num_blocks)})
        self.final_layer = FinalLayer(args)
        self.affline_norm = RMSNorm(dim, eps=args.norm_eps)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights; inputs are cast to it."""
        return self.affline_norm.weight.dtype

    def token_grid(self, x_B_C_T_H_W: Tensor) -> tuple[int, int, int]:
        """Token grid (t, h, w) of a latent; fails on a wrong channel count, a grid that the
        patch size does not divide, or one larger than the position tables."""
        args = self.args
        _, channels, frames, height, width = x_B_C_T_H_W.shape
        if channels != args.latent_channels:
            raise ValueError(f"latent has {channels} channels, expected {args.latent_channels}")
        if (
            frames % args.patch_temporal
            or height % args.patch_spatial
            or width % args.patch_spatial
        ):
            raise ValueError(
                f"latent T×H×W {frames}×{height}×{width} is not divisible by the patch size "
                f"{args.patch_temporal}×{args.patch_spatial}×{args.patch_spatial}"
            )
        grid = (
            frames // args.patch_temporal,
            height // args.patch_spatial,
            width // args.patch_spatial,
        )
        if any(g > m for g, m in zip(grid, args.max_tokens_thw, strict=True)):
            raise ValueError(f"token grid {grid} exceeds the position tables {args.max_tokens_thw}")
        return grid

    def embed(
        self,
        x_B_C_T_H_W: Tensor,
        c_noise: Tensor,
        text_B_M_C: Tensor,
        *,
        condition_mask_B_1_T_H_W: Tensor | None,
        padding_mask_B_1_H_W: Tensor | None,
        fps_B: Tensor | None,
    ) -> TokenInputs:
        """Patch-embed the masked latent and compute the conditioning shared by all blocks.

        ``c_noise`` is ``[B]`` (one noise level per sample) or ``[B, T]`` with ``T`` = 1 or the
        number of token frames.
        """
        grid = self.token_grid(x_B_C_T_H_W)
        x_B_C_T_H_W = x_B_C_T_H_W.to(self.dtype)
        x_B_T_H_W_D = self.x_embedder(
            with_masks(x_B_C_T_H_W, condition_mask_B_1_T_H_W, padding_mask_B_1_H_W)
        )
        c_noise_B_T = c_noise[:, None] if c_noise.ndim == 1 else c_noise
        if c_noise_B_T.ndim != 2 or c_noise_B_T.shape[1] not in (1, grid[0]):
            raise ValueError(f"c_noise must be [B] or [B, 1|{grid[0]}], got {tuple(c_noise.shape)}")
        emb_B_T_D, adaln_lora_B_T_3D = self.t_embedder(c_noise_B_T)
        return TokenInputs(
            x_B_L_D=x_B_T_H_W_D.flatten(1, 3),
            emb_B_T_D=self.affline_norm(emb_B_T_D),
            adaln_lora_B_T_3D=adaln_lora_B_T_3D,
            text_B_M_C=text_B_M_C.to(self.dtype),
            rope_2_L_Dh=self.pos_embedder(*grid, fps_B=fps_B),
            pos_L_D=self.extra_pos_embedder(*grid),
            grid_thw=grid,
        )

    def run_block(self, name: str, x_B_L_D: Tensor, inputs: TokenInputs) -> Tensor:
        """Apply block ``name`` with the shared conditioning."""
        return self.blocks[name](
            x_B_L_D,
            inputs.emb_B_T_D,
            inputs.adaln_lora_B_T_3D,
            text_B_M_C=inputs.text_B_M_C,
            rope_2_L_Dh=inputs.rope_2_L_Dh,
            pos_L_D=inputs.pos_L_D,
        )

    @torch.no_grad()
    def init_weights(self) -> None:
        """Reference initialisation; also refills buffers after ``to_empty``.

        Xavier-uniform for every Linear (zero biases), normal(0.02) for the timestep MLP,
        zeros for the last layer of every AdaLN modulation, trunc-normal(0.02) position tables.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (RMSNorm, RoPE3D, LearnablePosEmb)):
                module.init_weights()
        for name, param in self.t_embedder.named_parameters():
            if name.endswith("weight"):
                nn.init.normal_(param, std=0.02)
        for module in self.modules():
            if isinstance(module, (SubBlock, FinalLayer)):
                last = module.adaLN_modulation[-1]
                assert isinstance(last, nn.Linear)
                nn.init.zeros_(last.weight)


class DiT(DiTTrunk):
    """The base network; control residuals, when given, are added after the matching block."""

    def forward(
        self,
        x_B_C_T_H_W: Tensor,
        c_noise: Tensor,
        text_B_M_C: Tensor,
        *,
        condition_mask_B_1_T_H_W: Tensor | None = None,
        padding_mask_B_1_H_W: Tensor | None = None,
        fps_B: Tensor | None = None,
        control_B_L_D: Sequence[Tensor] = (),
    ) -> Tensor:
        """Return the network output ``[B, out_channels, T, H, W]``.

        Args:
            x_B_C_T_H_W: noisy latent times ``c_in`` (``latent_channels`` channels).
            c_noise: ``[B]`` or ``[B, T]`` noise input (``0.25·ln σ``).
            text_B_M_C: text embeddings; every slot is attended (no mask, as the reference).
            condition_mask_B_1_T_H_W: 1 on conditioning latent frames; None = zeros.
            padding_mask_B_1_H_W: 1 on padded pixels at any resolution; None = zeros.
            fps_B: frame rate per sample (only the first is used); None = ``base_fps``.
            control_B_L_D: residual i is added to the hidden state right after block i.
        """
        inputs = self.embed(
            x_B_C_T_H_W,
            c_noise,
            text_B_M_C,
            condition_mask_B_1_T_H_W=condition_mask_B_1_T_H_W,
            padding_mask_B_1_H_W=padding_mask_B_1_H_W,
            fps_B=fps_B,
        )
        if len(control_B_L_D) > len(self.blocks):
            raise ValueError(
                f"{len(control_B_L_D)} control residuals for {len(self.blocks)} blocks"
            )
        x_B_L_D = inputs.x_B_L_D
        for index, name in enumerate(self.blocks):
            x_B_L_D = self.run_block(name, x_B_L_D, inputs)
            if index < len(control_B_L_D):
                x_B_L_D = x_B_L_D + control_B_L_D[index]
        out_B_L_P = self.final_layer(x_B_L_D, inputs.emb_B_T_D, inputs.adaln_lora_B_T_3D)
        return self.unpatchify(out_B_L_P, inputs.grid_thw)

    def unpatchify(self, out_B_L_P: Tensor, grid_thw: tuple[int, int, int]) -> Tensor:
        """Tokens to video. Per token the outputs are ordered ``(p1 p2 t C)`` (row, col, time,
        channel), unlike the patch embedding's ``(c r m n)``."""
        args = self.args
        t, h, w = grid_thw
        return rearrange(
            out_B_L_P,
            "b (T H W) (p1 p2 t c) -> b c (T t) (H p1) (W p2)",
            T=t,
            H=h,
            W=w,
            p1=args.patch_spatial,
            p2=args.patch_spatial,
            t=args.patch_temporal,
        )
