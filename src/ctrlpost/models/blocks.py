"""The DiT block: self-attention, cross-attention and MLP, each with its own AdaLN-LoRA.

Hidden states are batch-first tokens ``x_B_L_D`` with ``L = T·H·W`` (t-major). Conditioning
vectors are per sample and per frame, ``emb_B_T_D`` with ``T`` either 1 (one noise level per
sample) or the number of token frames, so they broadcast over the ``H·W`` tokens of a frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctrlpost.models.args import DiTArgs
from ctrlpost.models.embeddings import RMSNorm, apply_rope
from ctrlpost.models.fp8 import Fp8FrozenLinear
from ctrlpost.models.fp8_attention import fp8_self_attention, fp8_self_attention_projected


class Attention(nn.Module):
    """Multi-head attention with per-head RMS-normalised queries and keys and no biases.

    Self-attention when ``context`` is None (RoPE applied after the q/k norm); cross-attention
    otherwise (no RoPE, and no mask: the reference attends to every text slot, padding included).
    Self-attention runs in FP8 once :meth:`use_fp8` has given the module its backward scales
    (a frozen base under ``model.base_precision = "fp8-attention"``).
    """

    fp8_backward_scales: Tensor | None

    def __init__(
        self, *, query_dim: int, context_dim: int, num_heads: int, head_dim: int, eps: float
    ) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.to_q = nn.Sequential(
            nn.Linear(query_dim, inner, bias=False), RMSNorm(head_dim, eps=eps)
        )
        self.to_k = nn.Sequential(
            nn.Linear(context_dim, inner, bias=False), RMSNorm(head_dim, eps=eps)
        )
        self.to_v = nn.Sequential(nn.Linear(context_dim, inner, bias=False))
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim, bias=False))
        # Not in the state dict: the released checkpoints load strictly either way.
        self.register_buffer("fp8_backward_scales", None, persistent=False)

    def use_fp8(self) -> None:
        """Compute self-attention in FP8 (:mod:`ctrlpost.models.fp8_attention`); the delayed
        backward scales start empty (zeros), as after :meth:`reset_fp8_scales`."""
        device = next(self.to_out.parameters()).device
        self.fp8_backward_scales = torch.zeros(4, device=device)

    def reset_fp8_scales(self) -> None:
        """Forget the delayed backward scales (after ``to_empty`` left them undefined)."""
        if self.fp8_backward_scales is not None:
            with torch.no_grad():
                self.fp8_backward_scales.zero_()

    def _heads(self, projection: nn.Sequential, x_B_L_C: Tensor) -> Tensor:
        # The norm (if any) acts on each head separately, so split heads before it.
        x_B_L_H_Dh = projection[0](x_B_L_C).unflatten(-1, (self.num_heads, self.head_dim))
        return projection[1](x_B_L_H_Dh) if len(projection) > 1 else x_B_L_H_Dh

    def forward(
        self,
        x_B_L_D: Tensor,
        context_B_M_C: Tensor | None = None,
        rope_2_L_Dh: Tensor | None = None,
    ) -> Tensor:
        """Attend from ``x`` to itself, or to ``context`` when given."""
        source = x_B_L_D if context_B_M_C is None else context_B_M_C
        q_B_L_H_Dh = self._heads(self.to_q, x_B_L_D)
        k_B_M_H_Dh = self._heads(self.to_k, source)
        v_B_M_H_Dh = self._heads(self.to_v, source)
        if rope_2_L_Dh is not None:
            q_B_L_H_Dh = apply_rope(q_B_L_H_Dh, rope_2_L_Dh)
            k_B_M_H_Dh = apply_rope(k_B_M_H_Dh, rope_2_L_Dh)
        q_B_H_L_Dh, k_B_H_M_Dh = q_B_L_H_Dh.transpose(1, 2), k_B_M_H_Dh.transpose(1, 2)
        v_B_H_M_Dh = v_B_M_H_Dh.transpose(1, 2)
        if context_B_M_C is None and self.fp8_backward_scales is not None:
            if isinstance(self.to_out[0], Fp8FrozenLinear):
                # The projection reads the kernel's e4m3 output: no bf16 copy, no re-rounding.
                return fp8_self_attention_projected(
                    q_B_H_L_Dh, k_B_H_M_Dh, v_B_H_M_Dh, self.fp8_backward_scales,
                    self.to_out[0].weight)
            out_B_H_L_Dh = fp8_self_attention(
                q_B_H_L_Dh, k_B_H_M_Dh, v_B_H_M_Dh, self.fp8_backward_scales
            )
        else:
            out_B_H_L_Dh = F.scaled_dot_product_attention(q_B_H_L_Dh, k_B_H_M_Dh, v_B_H_M_Dh)
        return self.to_out(out_B_H_L_Dh.transpose(1, 2).flatten(2))


class AttentionLayer(nn.Module):
    """Holder that gives attention weights their released names ``block.attn.*``."""

    def __init__(self, args: DiTArgs, *, cross: bool) -> None:
        super().__init__()
        self.attn = Attention(
            query_dim=args.model_channels,
            context_dim=args.text_dim if cross else args.model_channels,
            num_heads=args.num_heads,
            head_dim=args.head_dim,
            eps=args.norm_eps,
        )

    def forward(
        self,
        x_B_L_D: Tensor,
        context_B_M_C: Tensor | None = None,
        rope_2_L_Dh: Tensor | None = None,
    ) -> Tensor:
        """See :class:`Attention`."""
        return self.attn(x_B_L_D, context_B_M_C, rope_2_L_Dh)


class FeedForward(nn.Module):
    """``layer1 → GELU (exact) → layer2``, without biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layer1 = nn.Linear(dim, hidden, bias=False)
        self.activation = nn.GELU()
        self.layer2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x_B_L_D: Tensor) -> Tensor:
        """Apply the MLP token-wise."""
        return self.layer2(self.activation(self.layer1(x_B_L_D)))


def adaln_modulation(dim: int, lora_dim: int, chunks: int) -> nn.Sequential:
    """``SiLU → Linear(dim→lora) → Linear(lora→chunks·dim)``, no biases (AdaLN-LoRA)."""
    return nn.Sequential(
        nn.SiLU(),
        nn.Linear(dim, lora_dim, bias=False),
        nn.Linear(lora_dim, chunks * dim, bias=False),
    )


def per_frame(x_B_L_D: Tensor, frames: int) -> Tensor:
    """View tokens as ``x_B_T_S_D`` so per-frame vectors ``[B, T, 1, D]`` broadcast over them."""
    return x_B_L_D.unflatten(1, (frames, -1))


def modulate(x_B_L_D: Tensor, shift_B_T_D: Tensor, scale_B_T_D: Tensor, *, eps: float) -> Tensor:
    """``LayerNorm(x)·(1 + scale) + shift`` with a non-affine LayerNorm."""
    normed_B_T_S_D = per_frame(
        F.layer_norm(x_B_L_D, x_B_L_D.shape[-1:], eps=eps), shift_B_T_D.shape[1]
    )
    out_B_T_S_D = normed_B_T_S_D * (1 + scale_B_T_D[:, :, None]) + shift_B_T_D[:, :, None]
    return out_B_T_S_D.flatten(1, 2)


class SubBlock(nn.Module):
    """One residual branch: ``x + gate · op(modulate(norm(x)))``, modulation from AdaLN-LoRA.

    ``kind`` is ``"fa"`` (full self-attention), ``"ca"`` (cross-attention) or ``"mlp"``.
    """

    block: AttentionLayer | FeedForward

    def __init__(self, args: DiTArgs, *, kind: str) -> None:
        super().__init__()
        if kind not in ("fa", "ca", "mlp"):
            raise ValueError(f"unknown sub-block kind {kind!r}; expected 'fa', 'ca' or 'mlp'")
        self.kind = kind
        self.eps = args.norm_eps
        # ``block`` before ``adaLN_modulation``: the released parameter order.
        if kind == "mlp":
            self.block = FeedForward(args.model_channels, args.mlp_hidden)
        else:
            self.block = AttentionLayer(args, cross=kind == "ca")
        self.adaLN_modulation = adaln_modulation(args.model_channels, args.adaln_lora_dim, 3)

    def forward(
        self,
        x_B_L_D: Tensor,
        emb_B_T_D: Tensor,
        adaln_lora_B_T_3D: Tensor,
        *,
        text_B_M_C: Tensor,
        rope_2_L_Dh: Tensor,
    ) -> Tensor:
        """Apply the residual branch."""
        modulation = self.adaLN_modulation(emb_B_T_D) + adaln_lora_B_T_3D
        shift_B_T_D, scale_B_T_D, gate_B_T_D = modulation.chunk(3, dim=-1)
        h_B_L_D = modulate(x_B_L_D, shift_B_T_D, scale_B_T_D, eps=self.eps)
        if self.kind == "fa":
            out_B_L_D = self.block(h_B_L_D, None, rope_2_L_Dh)
        elif self.kind == "ca":
            out_B_L_D = self.block(h_B_L_D, text_B_M_C)
        else:
            out_B_L_D = self.block(h_B_L_D)
        gated_B_T_S_D = gate_B_T_D[:, :, None] * per_frame(out_B_L_D, gate_B_T_D.shape[1])
        return x_B_L_D + gated_B_T_S_D.flatten(1, 2)


class DiTBlock(nn.Module):
    """``FA → CA → MLP`` (``blocks.0/1/2``), after adding the per-block absolute positions."""

    def __init__(self, args: DiTArgs) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([SubBlock(args, kind=k) for k in ("fa", "ca", "mlp")])

    def forward(
        self,
        x_B_L_D: Tensor,
        emb_B_T_D: Tensor,
        adaln_lora_B_T_3D: Tensor,
        *,
        text_B_M_C: Tensor,
        rope_2_L_Dh: Tensor,
        pos_L_D: Tensor,
    ) -> Tensor:
        """Run the three residual branches."""
        x_B_L_D = x_B_L_D + pos_L_D
        for sub_block in self.blocks:
            x_B_L_D = sub_block(
                x_B_L_D,
                emb_B_T_D,
                adaln_lora_B_T_3D,
                text_B_M_C=text_B_M_C,
                rope_2_L_Dh=rope_2_L_Dh,
            )
        return x_B_L_D


class FinalLayer(nn.Module):
    """Modulated LayerNorm, then a projection to ``patch volume × out channels``.

    The modulation adds the first ``2·D`` entries of ``adaln_lora`` (shift, scale; no gate).
    """

    def __init__(self, args: DiTArgs) -> None:
        super().__init__()
        self.eps = args.norm_eps
        out_features = args.patch_volume * args.out_channels
        self.linear = nn.Linear(args.model_channels, out_features, bias=False)
        self.adaLN_modulation = adaln_modulation(args.model_channels, args.adaln_lora_dim, 2)

    def forward(self, x_B_L_D: Tensor, emb_B_T_D: Tensor, adaln_lora_B_T_3D: Tensor) -> Tensor:
        """Return ``out_B_L_P`` with ``P = p1·p2·t·C`` per token."""
        dim = x_B_L_D.shape[-1]
        modulation = self.adaLN_modulation(emb_B_T_D) + adaln_lora_B_T_3D[..., : 2 * dim]
        shift_B_T_D, scale_B_T_D = modulation.chunk(2, dim=-1)
        return self.linear(modulate(x_B_L_D, shift_B_T_D, scale_B_T_D, eps=self.eps))
