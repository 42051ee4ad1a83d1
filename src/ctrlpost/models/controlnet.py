"""The "block3" control branch (``GeneralDITEncoder``) and the base+control wrapper.

The branch is a short copy of the DiT trunk (its own embedders and blocks 0..2) plus a hint path.
It sees the same noisy latent as the base; the encoded hint is added after its block 0, and after
each block i a zero-initialised projection gives the residual that base block i adds.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctrlpost.models.args import ControlArgs, Flavor
from ctrlpost.models.dit import DiT, DiTTrunk, padding_channel
from ctrlpost.models.embeddings import PatchEmbed


def hint_mlp(dim: int, widths: tuple[int, ...]) -> nn.Sequential:
    """``Linear(dim→w0), SiLU, …, Linear(w_last→dim)``: Linear layers at even indices."""
    layers: list[nn.Module] = []
    sizes = (dim, *widths, dim)
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        if index:
            layers.append(nn.SiLU())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


class ControlNet(DiTTrunk):
    """Control branch; ``forward`` returns one residual ``[B, L, D]`` per control block.

    ``final_layer`` is built (the released weights hold it) but never used.
    """

    def __init__(self, args: ControlArgs) -> None:
        super().__init__(args.dit)
        self.control_args = args
        dim = args.dit.model_channels
        self.x_embedder2 = PatchEmbed(
            in_channels=args.hint_channels + 1,
            patch_spatial=args.dit.patch_spatial,
            patch_temporal=args.dit.patch_temporal,
            out_channels=dim,
        )
        self.input_hint_block = hint_mlp(dim, args.hint_mlp_widths)
        self.zero_blocks = nn.ModuleDict({name: nn.Linear(dim, dim) for name in self.blocks})

    @torch.no_grad()
    def init_weights(self) -> None:
        """Reference initialisation, then zero the residual projections and the last hint layer
        so that a fresh branch leaves the base output unchanged."""
        super().init_weights()
        last_hint = self.input_hint_block[-1]
        assert isinstance(last_hint, nn.Linear)
        for linear in (last_hint, *self.zero_blocks.values()):
            assert isinstance(linear, nn.Linear)
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def encode_hint(self, hint_B_C_T_H_W: Tensor, padding_mask_B_1_H_W: Tensor | None) -> Tensor:
        """Hint latent → ``guided_hint_B_L_D``: zero-pad channels to ``hint_channels``, append
        the padding mask, patch-embed with ``x_embedder2``, then ``input_hint_block``."""
        pad = self.control_args.hint_channels - hint_B_C_T_H_W.shape[1]
        if pad < 0:
            raise ValueError(
                f"hint has {hint_B_C_T_H_W.shape[1]} channels, more than "
                f"hint_channels={self.control_args.hint_channels}"
            )
        hint_B_C_T_H_W = F.pad(hint_B_C_T_H_W.to(self.dtype), (0, 0, 0, 0, 0, 0, 0, pad))
        hint_B_C_T_H_W = torch.cat(
            [hint_B_C_T_H_W, padding_channel(hint_B_C_T_H_W, padding_mask_B_1_H_W)], 1
        )
        hint_B_T_H_W_D = self.x_embedder2(hint_B_C_T_H_W)
        return self.input_hint_block(hint_B_T_H_W_D.flatten(1, 3))

    def forward(
        self,
        x_B_C_T_H_W: Tensor,
        c_noise: Tensor,
        text_B_M_C: Tensor,
        *,
        hint_B_C_T_H_W: Tensor,
        condition_mask_B_1_T_H_W: Tensor | None = None,
        padding_mask_B_1_H_W: Tensor | None = None,
        fps_B: Tensor | None = None,
        control_weight: float = 1.0,
    ) -> list[Tensor]:
        """Return ``control_B_L_D`` residuals for base blocks 0..n−1 (arguments as :class:`DiT`;
        ``hint_B_C_T_H_W`` is the hint's latent on the same grid as ``x``)."""
        if hint_B_C_T_H_W.shape[2:] != x_B_C_T_H_W.shape[2:]:
            raise ValueError(
                f"hint grid {tuple(hint_B_C_T_H_W.shape[2:])} "
                f"!= latent grid {tuple(x_B_C_T_H_W.shape[2:])}"
            )
        inputs = self.embed(
            x_B_C_T_H_W,
            c_noise,
            text_B_M_C,
            condition_mask_B_1_T_H_W=condition_mask_B_1_T_H_W,
            padding_mask_B_1_H_W=padding_mask_B_1_H_W,
            fps_B=fps_B,
        )
        guided_hint_B_L_D: Tensor | None = self.encode_hint(hint_B_C_T_H_W, padding_mask_B_1_H_W)
        x_B_L_D = inputs.x_B_L_D
        residuals: list[Tensor] = []
        for name in self.blocks:
            x_B_L_D = self.run_block(name, x_B_L_D, inputs)
            if guided_hint_B_L_D is not None:  # only after the first block
                x_B_L_D = x_B_L_D + guided_hint_B_L_D
                guided_hint_B_L_D = None
            residuals.append(self.zero_blocks[name](x_B_L_D) * control_weight)
        return residuals


class ControlledDiT(nn.Module):
    """Runs the control branch, then the base with the branch's residuals; returns the base output.

    Children are ``base`` and ``control``; ``state_dict.py`` maps them to the released layouts.
    """

    def __init__(self, *, base: DiT, control: ControlNet) -> None:
        super().__init__()
        if control.control_args.num_blocks > base.args.num_blocks:
            raise ValueError("the control branch has more blocks than the base")
        self.base = base
        self.control = control

    def init_weights(self) -> None:
        """Fresh reference init of both parts (the base is normally loaded afterwards)."""
        self.base.init_weights()
        self.control.init_weights()

    def forward(
        self,
        x_B_C_T_H_W: Tensor,
        c_noise: Tensor,
        text_B_M_C: Tensor,
        *,
        hint_B_C_T_H_W: Tensor,
        condition_mask_B_1_T_H_W: Tensor | None = None,
        padding_mask_B_1_H_W: Tensor | None = None,
        fps_B: Tensor | None = None,
        control_weight: float = 1.0,
    ) -> Tensor:
        """Return ``[B, out_channels, T, H, W]`` (arguments as :meth:`ControlNet.forward`)."""
        masks = {
            "condition_mask_B_1_T_H_W": condition_mask_B_1_T_H_W,
            "padding_mask_B_1_H_W": padding_mask_B_1_H_W,
            "fps_B": fps_B,
        }
        control_B_L_D = self.control(
            x_B_C_T_H_W,
            c_noise,
            text_B_M_C,
            hint_B_C_T_H_W=hint_B_C_T_H_W,
            control_weight=control_weight,
            **masks,
        )
        return self.base(x_B_C_T_H_W, c_noise, text_B_M_C, control_B_L_D=control_B_L_D, **masks)


def build_controlled_dit(flavor: Flavor) -> ControlledDiT:
    """Construct base + control for ``flavor`` on the current default device (use
    ``torch.device("meta")`` for a free build, then ``to_empty`` and ``init_weights``)."""
    return ControlledDiT(base=DiT(flavor.base), control=ControlNet(flavor.control))


@torch.no_grad()
def init_control_from_base(control: ControlNet, base: DiT) -> list[str]:
    """Copy every tensor that the branch shares by name with the base (embedders, position
    tables, ``affline_norm``, ``final_layer``, blocks 0..n−1), as the reference does before
    post-training. Returns the copied names; the hint path and zero blocks keep their init."""
    base_state = base.state_dict()
    copied: list[str] = []
    for name, tensor in control.state_dict().items():
        source = base_state.get(name)
        if source is None:
            continue
        if source.shape != tensor.shape:
            raise ValueError(
                f"{name}: base shape {tuple(source.shape)} != control {tuple(tensor.shape)}"
            )
        tensor.copy_(source)
        copied.append(name)
    return copied
