"""FSDP2 shards on a mesh of the rank's device type, named explicitly (not FSDP's default, which
takes the host's accelerator: a gloo job on a GPU host then mixed devices)."""

from __future__ import annotations

import pytest
import torch
from torch.distributed.tensor import DTensor

from ctrlpost.engine.parallel import apply_fsdp
from ctrlpost.models import DiT, get_flavor


@pytest.mark.usefixtures("one_process_group")
def test_every_shard_lives_on_a_mesh_of_the_given_device_type() -> None:
    net = DiT(get_flavor("tiny").base)
    apply_fsdp(net, device=torch.device("cpu"), param_dtype=None)
    meshes = {p.device_mesh.device_type for p in net.parameters() if isinstance(p, DTensor)}
    assert meshes == {"cpu"}
    assert all(isinstance(p, DTensor) for p in net.parameters())
