"""Strict checkpoint I/O in the released layouts (tiny flavor files written by the tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ctrlpost.errors import WeightsError
from ctrlpost.models import ControlNet, DiT, get_flavor
from ctrlpost.models.state_dict import (
    LOGVAR_SHAPES,
    base_layout,
    check_checkpoint_keys,
    control_layout,
    export_control_state_dict,
    load_base_checkpoint,
    load_control_checkpoint,
    released_layout,
    save_checkpoint,
)

FLAVOR = get_flavor("tiny")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EXTRA = "blocks.block0.blocks.0.block.attn.attn_op._extra_state"


@pytest.fixture
def control() -> ControlNet:
    torch.manual_seed(0)
    net = ControlNet(FLAVOR.control)
    net.init_weights()
    with torch.no_grad():
        for param in net.parameters():
            param.normal_()
    return net


@pytest.fixture
def base() -> DiT:
    torch.manual_seed(1)
    net = DiT(FLAVOR.base)
    net.init_weights()
    return net


def write(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save(state, path)
    return path


def released_control(control: ControlNet) -> dict[str, torch.Tensor]:
    state = {f"net.{k}": v.clone() for k, v in control.state_dict().items()}
    state[f"net.{EXTRA}"] = torch.tensor([1, 2, 3], dtype=torch.uint8)  # TE metadata: ignored
    return state


def test_released_control_file_loads_strictly(tmp_path: Path, control: ControlNet) -> None:
    path = write(tmp_path / "edge_control.pt", released_control(control))
    state = load_control_checkpoint(path, ControlNet(FLAVOR.control))
    assert EXTRA not in state
    fresh = ControlNet(FLAVOR.control)
    fresh.load_state_dict(state, strict=True)
    for name, tensor in control.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name


def test_released_base_file_loads_with_its_logvar_head(tmp_path: Path, base: DiT) -> None:
    state = {f"base_model.net.{k}": v for k, v in base.state_dict().items()}
    state |= {f"base_model.logvar.{k}": torch.randn(shape) for k, shape in LOGVAR_SHAPES.items()}
    state[f"base_model.net.{EXTRA}"] = torch.zeros(2)
    weights = load_base_checkpoint(write(tmp_path / "base_model.pt", state), base)
    assert set(weights.logvar) == {"0.freqs", "0.phases", "1.weight"}
    assert torch.equal(weights.logvar["1.weight"], state["base_model.logvar.1.weight"])
    DiT(FLAVOR.base).load_state_dict(weights.net, strict=True)


def assert_one_line_error(excinfo: pytest.ExceptionInfo[WeightsError], *names: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for name in names:
        assert name in message
    return message


def test_renamed_key_fails_naming_both_names(tmp_path: Path, control: ControlNet) -> None:
    state = released_control(control)
    state["net.zero_blocks.block9.bias"] = state.pop("net.zero_blocks.block1.bias")
    path = write(tmp_path / "renamed.pt", state)
    with pytest.raises(WeightsError) as info:
        load_control_checkpoint(path, control)
    message = assert_one_line_error(
        info, str(path), "net.zero_blocks.block1.bias", "net.zero_blocks.block9.bias"
    )
    assert "missing 1" in message and "unexpected 1" in message


def test_missing_key_fails_naming_it(tmp_path: Path, control: ControlNet) -> None:
    state = released_control(control)
    del state["net.pos_embedder.seq"]
    path = write(tmp_path / "missing.pt", state)
    with pytest.raises(WeightsError) as info:
        load_control_checkpoint(path, control)
    assert_one_line_error(info, "missing.pt", "missing 1: net.pos_embedder.seq")


def test_wrong_shape_fails_naming_both_shapes(tmp_path: Path, control: ControlNet) -> None:
    state = released_control(control)
    state["net.x_embedder2.proj.1.weight"] = torch.zeros(128, 99)
    path = write(tmp_path / "shape.pt", state)
    with pytest.raises(WeightsError) as info:
        load_control_checkpoint(path, control)
    assert_one_line_error(
        info, "wrong shape 1: net.x_embedder2.proj.1.weight [128, 99] (expected [128, 132])"
    )


def test_wrong_file_lists_a_few_keys_and_counts_the_rest(
    tmp_path: Path, control: ControlNet, base: DiT
) -> None:
    path = write(tmp_path / "edge_control.pt", released_control(control))
    with pytest.raises(WeightsError) as info:
        load_base_checkpoint(path, base)
    message = assert_one_line_error(info, "edge_control.pt", "… and ")
    assert len(message) < 1000
    assert info.value.hint is not None and "right file" in info.value.hint


class Payload:
    """Unpickling this would create ``path``: a stand-in for code hidden in a checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.path), "ran"))  # type: ignore[return-value]


def test_missing_and_unreadable_files_are_weights_errors(
    tmp_path: Path, control: ControlNet
) -> None:
    with pytest.raises(WeightsError, match="no such checkpoint file") as info:
        load_control_checkpoint(tmp_path / "absent.pt", control)
    assert info.value.hint and "fetch-weights" in info.value.hint
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"cannot read checkpoint: not a torch file of plain "
                       r"tensors$") as unreadable:
        load_control_checkpoint(garbage, control)
    assert "weights_only" not in str(unreadable.value) + str(unreadable.value.hint)
    marker = tmp_path / "executed"
    torch.save({"net.x": Payload(marker)}, tmp_path / "payload.pt")
    with pytest.raises(WeightsError, match="not a torch file of plain tensors"):
        load_control_checkpoint(tmp_path / "payload.pt", control)
    assert not marker.exists()  # refused before anything ran
    nested = write(tmp_path / "training.pt", {"model": {"a": torch.zeros(1)}, "ema": None})  # type: ignore[dict-item]
    with pytest.raises(WeightsError, match="not a flat"):
        load_control_checkpoint(nested, control)


def test_check_checkpoint_keys_reports_without_raising(tmp_path: Path, control: ControlNet) -> None:
    with torch.device("meta"):
        expected = control_layout(ControlNet(FLAVOR.control))
    state = released_control(control)
    del state["net.affline_norm.weight"]
    state["net.extra"] = torch.zeros(1)
    problems = check_checkpoint_keys(write(tmp_path / "c.pt", state), expected)
    assert [(p.kind, p.key) for p in problems] == [
        ("missing", "net.affline_norm.weight"),
        ("unexpected", "net.extra"),
    ]
    assert problems[0].expected == (128,)


def test_export_then_load_round_trips(tmp_path: Path, control: ControlNet) -> None:
    exported = export_control_state_dict(control)
    assert set(exported) == set(control_layout(control))
    path = save_checkpoint(exported, tmp_path / "out" / "iter_000000010_ema_model.pt")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    fresh = ControlNet(FLAVOR.control)
    fresh.load_state_dict(load_control_checkpoint(path, fresh), strict=True)
    for name, tensor in control.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    half = export_control_state_dict(control, dtype=torch.bfloat16)
    assert half["net.zero_blocks.block0.weight"].dtype == torch.bfloat16
    assert half["net.pos_embedder.seq"].dtype == torch.bfloat16  # every floating tensor


def test_save_replaces_an_existing_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    save_checkpoint({"a": torch.ones(2)}, path)
    save_checkpoint({"a": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]


def test_7b_released_layouts_match_the_manifests() -> None:
    flavor = get_flavor("7b")
    for part, fixture, prefix in (
        ("base", "transfer1_7b_base_params.json", "base_model.net."),
        ("control", "transfer1_7b_edge_ctrl_params.json", "net."),
    ):
        manifest = json.loads((FIXTURES / fixture).read_text())
        assert manifest["key_prefix_in_released_checkpoint"] == prefix
        expected = {prefix + k: tuple(v) for k, v in manifest["parameters"].items()}
        expected |= {prefix + k: tuple(v) for k, v in manifest["persistent_buffers"].items()}
        if part == "base":
            companions = manifest["companion_keys_outside_net"]
            expected |= {f"base_model.{k}": tuple(v) for k, v in companions.items() if k != "note"}
        assert released_layout(flavor, part) == expected  # type: ignore[arg-type]


def test_tiny_layouts_agree_with_the_modules(base: DiT, control: ControlNet) -> None:
    assert released_layout(FLAVOR, "base") == base_layout(base)
    assert released_layout(FLAVOR, "control") == control_layout(control)


def test_legacy_serialisation_is_read_without_mmap(tmp_path: Path, control: ControlNet) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(released_control(control), path, _use_new_zipfile_serialization=False)
    state = load_control_checkpoint(path, control)
    assert torch.equal(state["zero_blocks.block0.weight"], control.zero_blocks.block0.weight)
