"""Clean-room PyTorch model of the Cosmos-Transfer1 7B DiT and its "block3" control branch.

Nothing here knows about distribution, recipes or data: modules take flavor dataclasses and
tensors. Build on the meta device, then ``to_empty`` + ``init_weights()`` or a strict load.
"""

from __future__ import annotations

from ctrlpost.models.args import (
    FLAVOR_NAMES,
    ControlArgs,
    DiTArgs,
    Flavor,
    UnknownFlavorError,
    get_flavor,
    with_control_blocks,
)
from ctrlpost.models.blocks import DiTBlock
from ctrlpost.models.controlnet import (
    ControlledDiT,
    ControlNet,
    build_controlled_dit,
    init_control_from_base,
)
from ctrlpost.models.dit import DiT
from ctrlpost.models.state_dict import (
    BaseWeights,
    KeyProblem,
    check_checkpoint_keys,
    export_control_state_dict,
    load_base_checkpoint,
    load_control_checkpoint,
    released_layout,
    save_checkpoint,
)

__all__ = [
    "FLAVOR_NAMES",
    "BaseWeights",
    "ControlArgs",
    "ControlNet",
    "ControlledDiT",
    "DiT",
    "DiTArgs",
    "DiTBlock",
    "Flavor",
    "KeyProblem",
    "UnknownFlavorError",
    "build_controlled_dit",
    "check_checkpoint_keys",
    "export_control_state_dict",
    "get_flavor",
    "init_control_from_base",
    "load_base_checkpoint",
    "load_control_checkpoint",
    "released_layout",
    "save_checkpoint",
    "with_control_blocks",
]
