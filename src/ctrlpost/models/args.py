"""Architecture flavors of the Cosmos-Transfer1 DiT and its control branch.

Architecture is chosen by name (``"7b"`` or ``"tiny"``), never assembled from recipe fields, so a
checkpoint and the network that reads it can only disagree when the flavor name is wrong.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

from ctrlpost.errors import WeightsError


@dataclass(frozen=True, kw_only=True)
class DiTArgs:
    """Hyper-parameters of one DiT stack (the frozen base, or the control branch's copy)."""

    model_channels: int
    num_blocks: int
    num_heads: int
    mlp_ratio: float = 4.0
    text_dim: int
    text_tokens: int = 512
    latent_channels: int = 16
    # 16 latent channels + 1 condition-frame mask; the padding mask is one more, added inside.
    in_channels: int = 17
    out_channels: int = 16
    patch_spatial: int = 2
    patch_temporal: int = 1
    max_img_h: int
    max_img_w: int
    max_frames: int
    adaln_lora_dim: int
    rope_h_ratio: float = 1.0
    rope_w_ratio: float = 1.0
    rope_t_ratio: float = 2.0
    base_fps: float = 24.0
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        # The condition-frame mask is the one input channel beyond the latent.
        if self.in_channels != self.latent_channels + 1:
            raise ValueError("in_channels must be latent_channels + 1 (the condition mask)")
        if self.model_channels % self.num_heads:
            raise ValueError("model_channels must be a multiple of num_heads")

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.model_channels // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        """Hidden width of the MLP sub-block."""
        return int(self.model_channels * self.mlp_ratio)

    @property
    def patch_in_features(self) -> int:
        """Inputs of the video patch embedding: (in + padding mask) channels × patch volume."""
        return (self.in_channels + 1) * self.patch_volume

    @property
    def patch_volume(self) -> int:
        """Latent voxels per token."""
        return self.patch_temporal * self.patch_spatial**2

    @property
    def max_tokens_thw(self) -> tuple[int, int, int]:
        """Size of the (t, h, w) token grid covered by the positional tables."""
        return (
            self.max_frames // self.patch_temporal,
            self.max_img_h // self.patch_spatial,
            self.max_img_w // self.patch_spatial,
        )

    @property
    def rope_dims_thw(self) -> tuple[int, int, int]:
        """Rotary channels per axis: h = w = 2·(d // 6), t takes the rest (128 → 44/42/42)."""
        spatial = 2 * (self.head_dim // 6)
        return self.head_dim - 2 * spatial, spatial, spatial


@dataclass(frozen=True, kw_only=True)
class ControlArgs:
    """The "block3" control branch: a short DiT stack plus the hint path."""

    dit: DiTArgs
    hint_channels: int
    hint_mlp_widths: tuple[int, ...] = (16, 16, 32, 32, 96, 96, 256)

    @property
    def num_blocks(self) -> int:
        """Control blocks; control block i feeds base block i."""
        return self.dit.num_blocks

    @property
    def hint_in_features(self) -> int:
        """Inputs of the hint patch embedding: (hint + padding mask) channels × patch volume."""
        return (self.hint_channels + 1) * self.dit.patch_volume


@dataclass(frozen=True, kw_only=True)
class Flavor:
    """A named pair of base and control architectures."""

    name: str
    base: DiTArgs
    control: ControlArgs


class UnknownFlavorError(WeightsError, ValueError):
    """The requested architecture flavor does not exist."""


def _control_of(base: DiTArgs, *, num_blocks: int, hint_channels: int) -> ControlArgs:
    # The reference never overrides the control branch's RoPE ratios, so its t ratio stays 1
    # while the base uses 2; the released control weights were trained that way.
    dit = replace(base, num_blocks=num_blocks, rope_t_ratio=1.0)
    return ControlArgs(dit=dit, hint_channels=hint_channels)


def _flavor_7b() -> Flavor:
    base = DiTArgs(
        model_channels=4096,
        num_blocks=28,
        num_heads=32,
        text_dim=1024,
        max_img_h=240,
        max_img_w=240,
        max_frames=128,
        adaln_lora_dim=256,
    )
    return Flavor(name="7b", base=base, control=_control_of(base, num_blocks=3, hint_channels=128))


def _flavor_tiny() -> Flavor:
    base = DiTArgs(
        model_channels=128,
        num_blocks=4,
        num_heads=4,
        text_dim=64,
        max_img_h=64,
        max_img_w=64,
        max_frames=16,
        adaln_lora_dim=32,
    )
    return Flavor(name="tiny", base=base, control=_control_of(base, num_blocks=3, hint_channels=32))


_FLAVOR_BUILDERS = {"7b": _flavor_7b, "tiny": _flavor_tiny}
FLAVOR_NAMES: tuple[str, ...] = tuple(_FLAVOR_BUILDERS)


def get_flavor(name: str) -> Flavor:
    """Return the architecture called ``name``; unknown names list the valid ones."""
    builder = _FLAVOR_BUILDERS.get(name)
    if builder is None:
        close = difflib.get_close_matches(name.lower(), FLAVOR_NAMES, n=1)
        hint = f"did you mean {close[0]!r}?" if close else None
        raise UnknownFlavorError(
            f"unknown model flavor {name!r}; valid flavors: {', '.join(FLAVOR_NAMES)}", hint=hint
        )
    return builder()


def with_control_blocks(flavor: Flavor, num_blocks: int) -> Flavor:
    """The flavor with a control branch of ``num_blocks`` blocks (the released branch has 3)."""
    if not 1 <= num_blocks <= flavor.base.num_blocks:
        raise ValueError(
            f"num_control_blocks must be in [1, {flavor.base.num_blocks}] for flavor "
            f"{flavor.name!r}, got {num_blocks}"
        )
    if num_blocks == flavor.control.num_blocks:
        return flavor
    control = replace(flavor.control, dit=replace(flavor.control.dit, num_blocks=num_blocks))
    return replace(flavor, control=control)
