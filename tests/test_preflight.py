"""The weights stage of `verify` against checkpoints written in the released layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ctrlpost.cli import app
from ctrlpost.models import build_controlled_dit, get_flavor, save_checkpoint
from ctrlpost.models.state_dict import BASE_LOGVAR_PREFIX, BASE_NET_PREFIX
from ctrlpost.models.tiny_tokenizer import build_tiny_tokenizer
from ctrlpost.models.tokenizer import torchscript_deprecation_silenced

runner = CliRunner()


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny-flavor base, control and tokenizer files in the layout `fetch-weights` writes."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = build_controlled_dit(get_flavor("tiny"))
    model.init_weights()
    base = {BASE_NET_PREFIX + k: v for k, v in model.base.state_dict().items()}
    base |= {BASE_LOGVAR_PREFIX + k: torch.zeros(s)
             for k, s in {"0.freqs": (128,), "0.phases": (128,), "1.weight": (1, 128)}.items()}
    save_checkpoint(base, root / "org/dit/base_model.pt")
    control = {"net." + k: v for k, v in model.control.state_dict().items()}
    save_checkpoint(control, root / "org/dit/edge_control.pt")
    build_tiny_tokenizer(root / "org/tok")
    return root


def verify(tmp_path: Path, weights_dir: Path, *extra: str) -> tuple[int, dict]:
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'[job]\nname = "x"\n[weights]\ndir = "{weights_dir}"\nbase = "org/dit/base_model.pt"\n'
        'control = "org/dit/edge_control.pt"\ntokenizer = "org/tok"\n'
        '[model]\nflavor = "tiny"\n[[control]]\nmodality = "edge"\n[train]\nsteps = 1\n'
    )
    result = runner.invoke(app, ["verify", str(recipe), "--json", "--stages",
                                 "recipe,plugins,weights", *extra])
    return result.exit_code, json.loads(result.output)


def test_released_layout_passes(tmp_path: Path, weights_dir: Path) -> None:
    code, report = verify(tmp_path, weights_dir)
    assert code == 0, report["problems"]
    weights = report["stages"][2]
    assert weights["name"] == "weights" and weights["summary"]["flavor"] == "tiny"
    assert weights["summary"]["checked"][:2] == ["weights.base", "weights.control"]


def test_tampered_control_names_the_bad_keys(tmp_path: Path, weights_dir: Path) -> None:
    state = torch.load(weights_dir / "org/dit/edge_control.pt", weights_only=True)
    state["net.zero_blocks.block0.wieght"] = state.pop("net.zero_blocks.block0.weight")
    state["net.x_embedder2.proj.1.weight"] = torch.zeros(3, 3)
    save_checkpoint(state, tmp_path / "bad/edge_control.pt")
    bad = f"weights.control='{tmp_path}/bad/edge_control.pt'"
    code, report = verify(tmp_path, weights_dir, "--set", bad)
    assert code == 2
    (problem,) = report["problems"]
    assert problem["stage"] == "weights" and problem["path"] == "weights.control"
    message = problem["message"]
    assert "missing 1: net.zero_blocks.block0.weight" in message
    assert "unexpected 1: net.zero_blocks.block0.wieght" in message
    assert "wrong shape 1: net.x_embedder2.proj.1.weight [3, 3]" in message


def test_wrong_flavor_and_missing_files(tmp_path: Path, weights_dir: Path) -> None:
    code, report = verify(tmp_path, weights_dir, "--set", "model.flavor='7b'",
                          "--set", "weights.tokenizer='org/none'")
    assert code == 2
    paths = [p["path"] for p in report["problems"]]
    assert paths == ["weights.base", "weights.control", "weights.tokenizer/encoder.jit",
                     "weights.tokenizer/decoder.jit", "weights.tokenizer/mean_std.pt"]
    assert "checkpoint does not match the model" in report["problems"][0]["message"]
    assert "run `ctrlpost fetch-weights" in report["problems"][2]["message"]


def test_compile_tokenizer_needs_a_traced_encoder(tmp_path: Path, weights_dir: Path) -> None:
    code, report = verify(tmp_path, weights_dir, "--set", "parallel.compile_tokenizer=true")
    assert code == 2
    (problem,) = report["problems"]  # the tiny tokenizer is scripted: it has control flow
    assert problem["path"] == "parallel.compile_tokenizer"
    assert "encoder.jit: its graph cannot be compiled: node prim::" in problem["message"]
    assert problem["message"].endswith("(the encoder then runs as TorchScript)")
    # A traced encoder passes.
    traced = tmp_path / "traced"
    traced.mkdir()
    for name in ("decoder.jit", "mean_std.pt"):
        (traced / name).write_bytes((weights_dir / "org/tok" / name).read_bytes())
    with torchscript_deprecation_silenced():
        encoder = torch.jit.trace(torch.nn.Conv3d(3, 16, 8, stride=8), torch.rand(1, 3, 8, 8, 8))
        torch.jit.save(encoder, str(traced / "encoder.jit"))
    code, report = verify(tmp_path, weights_dir, "--set", "parallel.compile_tokenizer=true",
                          "--set", f"weights.tokenizer='{traced}'")
    assert code == 0, report["problems"]


def test_control_block_count_is_checked(tmp_path: Path, weights_dir: Path) -> None:
    code, report = verify(tmp_path, weights_dir, "--set", "model.num_control_blocks=9")
    assert code == 2
    (problem,) = report["problems"]
    assert problem["path"] == "model.num_control_blocks" and "[1, 4]" in problem["message"]
    code, report = verify(tmp_path, weights_dir, "--set", "model.num_control_blocks=2")
    (problem,) = report["problems"]
    assert "unexpected" in problem["message"] and "net.blocks.block2" in problem["message"]


def test_more_local_ranks_than_this_machine_has_is_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ctrlpost import preflight

    monkeypatch.setattr(preflight, "_cpus", lambda: 2)
    assert preflight.local_ranks_warning(2, "gloo") is None
    warning = preflight.local_ranks_warning(8, "gloo")
    assert warning == ("parallel.nproc_per_node = 8 but this machine has 2 CPU(s) and no GPU: to "
                       "train here, set parallel.nproc_per_node = 2 or run `ctrlpost train "
                       "--nproc 2`")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible, whatever the machine has
    assert preflight.local_ranks_warning(8, "nccl") == warning
    recipe = tmp_path / "r.toml"
    recipe.write_text('[job]\nname = "x"\n[[control]]\nmodality = "edge"\n[train]\nsteps = 1\n'
                      '[parallel]\nnproc_per_node = 8\nbackend = "gloo"\n')
    result = runner.invoke(app, ["verify", str(recipe), "--json", "--stages", "recipe"])
    report = json.loads(result.output)
    assert result.exit_code == 0 and report["ok"] is True  # verify may run on another machine
    assert report["stages"][0]["summary"]["warning"] == warning
