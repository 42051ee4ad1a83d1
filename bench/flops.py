"""Model FLOPs of a ControlNet training step: the one count every benchmark divides by.

Only work that runs is counted. A matmul of m×k by k×n counts 2·m·k·n; recomputation (activation
checkpointing, the attention backward's QKᵀ) is never counted.

  per block, L video tokens, M text tokens, width D, text width C, MLP width F, AdaLN rank r,
  T token frames:
    linear  = 2·L·(4·D² + 2·D² + 2·D·F)       self-attn q,k,v,o; cross-attn q,o; MLP
            + 2·M·2·C·D                        cross-attn k,v on the text
            + 3·2·T·(D·r + r·3D)               AdaLN-LoRA (per frame, negligible)
    attn    = 4·L²·D + 4·L·M·D                 QKᵀ and PV of self- and cross-attention

``part="base"`` — the frozen base alone, forward + input-gradient backward (what a bench of the
base measures): every block 2·linear + 3·attn (backward: dX only; attention backward = dQ, dK,
dV, dP = 2× its forward), patch embedding and final layer ×2.

``part="control"`` — the ControlNet step: the base runs forward everywhere, but its backward
starts at the output and stops where the first control residual enters (after base block
``CONTROL_ENTERS_AFTER``): the blocks before that point, and the patch embedding, have no
backward (nothing upstream needs a gradient). The control branch: each block 3·linear + 3·attn
(backward: dX and dW) + its zero projection 3·2·L·D²; its embeddings: patch embedding and hint
MLP ×3, the hint's input projection ×2 (the hint needs no gradient).
"""

from __future__ import annotations

import itertools

from ctrlpost.models import Flavor
from ctrlpost.models.args import DiTArgs

CONTROL_ENTERS_AFTER = 1
"""Base blocks that run before the first control residual is added (block 0): forward only."""


def block_flops(args: DiTArgs, tokens: int, frames: int) -> tuple[float, float]:
    """(linear, attention) forward FLOPs of one DiT block (see the module docstring)."""
    L, M, D = tokens, args.text_tokens, args.model_channels
    C, r = args.text_dim, args.adaln_lora_dim
    F = args.mlp_hidden
    linear = 2 * L * (4 * D * D + 2 * D * D + 2 * D * F) + 2 * M * 2 * C * D
    linear += 3 * 2 * frames * (D * r + r * 3 * D)
    attention = 4 * L * L * D + 4 * L * M * D
    return float(linear), float(attention)


def model_flops(flavor: Flavor, tokens: int, frames: int, *, part: str) -> dict[str, float]:
    """FLOPs that run in one step of ``part`` (``"base"`` or ``"control"``), by component,
    with their ``"total"``; the module docstring says what each includes."""
    if part not in ("base", "control"):
        raise ValueError(f"part must be 'base' or 'control', not {part!r}")
    base = flavor.base
    D = base.model_channels
    linear, attention = block_flops(base, tokens, frames)
    forward_block, backward_block = linear + attention, linear + 2 * attention
    patch_embed = 2 * tokens * base.patch_in_features * D
    final_layer = 2 * tokens * D * base.patch_volume * base.out_channels
    if part == "base":
        out = {"base": base.num_blocks * (forward_block + backward_block)
               + 2 * (patch_embed + final_layer)}
    else:
        with_backward = base.num_blocks - CONTROL_ENTERS_AFTER
        out = {"base": base.num_blocks * forward_block + with_backward * backward_block
               + patch_embed + 2 * final_layer}
        c = flavor.control
        c_linear, c_attention = block_flops(c.dit, tokens, frames)
        blocks = c.num_blocks * (3 * c_linear + 3 * c_attention + 3 * 2 * tokens * D * D)
        widths = (D, *c.hint_mlp_widths, D)
        hint_mlp = sum(2 * tokens * a * b for a, b in itertools.pairwise(widths))
        embeds = 3 * (2 * tokens * c.dit.patch_in_features * D + hint_mlp)
        embeds += 2 * 2 * tokens * c.hint_in_features * D
        out["control"] = blocks + embeds
    out["total"] = sum(out.values())
    return out
