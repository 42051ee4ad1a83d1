"""The 7b networks built on the meta device have exactly the reference's parameter names/shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ctrlpost.models import ControlNet, DiT, get_flavor

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def manifest(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(scope="module")
def meta_7b() -> tuple[DiT, ControlNet]:
    flavor = get_flavor("7b")
    with torch.device("meta"):
        return DiT(flavor.base), ControlNet(flavor.control)


@pytest.mark.parametrize(
    ("part", "fixture", "total"),
    [
        (0, "transfer1_7b_base_params.json", 7_236_208_640),
        (1, "transfer1_7b_edge_ctrl_params.json", 893_497_120),
    ],
)
def test_parameters_match_the_manifest(meta_7b, part: int, fixture: str, total: int) -> None:
    net = meta_7b[part]
    expected = manifest(fixture)
    ours = {name: list(p.shape) for name, p in net.named_parameters()}
    assert set(ours) == set(expected["parameters"])
    assert ours == expected["parameters"]
    assert list(ours) == list(expected["parameters"])  # registration order, too
    assert sum(p.numel() for p in net.parameters()) == total == expected["total_parameters"]


@pytest.mark.parametrize("part", [0, 1])
def test_state_dict_adds_only_the_persistent_rope_buffer(meta_7b, part: int) -> None:
    net = meta_7b[part]
    buffers = set(net.state_dict()) - {name for name, _ in net.named_parameters()}
    assert buffers == {"pos_embedder.seq"}
    assert net.state_dict()["pos_embedder.seq"].shape == (128,)


def test_control_zero_initialised_tensors_are_the_reference_ones() -> None:
    expected = set(manifest("transfer1_7b_edge_ctrl_params.json")["zero_initialized_at_build"])
    net = ControlNet(get_flavor("tiny").control)
    net.init_weights()
    zero = {name for name, p in net.named_parameters() if not torch.any(p)}
    assert expected <= zero
    # Besides those, only biases (zeroed by the Linear init) and the last AdaLN layers are zero.
    others = {n for n in zero - expected if not n.endswith("bias")}
    assert others and all(".adaLN_modulation.2." in n for n in others)
