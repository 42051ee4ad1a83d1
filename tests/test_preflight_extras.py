"""`logging.tensorboard = true` without the `tensorboard` extra: `verify` reports it under its
key with the fix, and `train` stops on it before any rank starts or anything is written."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ctrlpost.cli import app

runner = CliRunner()

PROBLEM = ("needs tensorboard: pip install 'ctrlpost[tensorboard]' or set "
           "logging.tensorboard = false")


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    """The tiny flavor, writing under tmp_path, with TensorBoard logging turned on."""
    path = tmp_path / "r.toml"
    path.write_text(f'[job]\nname = "x"\noutput_root = "{tmp_path / "out"}"\n'
                    '[model]\nflavor = "tiny"\n[[control]]\nmodality = "edge"\n'
                    '[train]\nsteps = 1\n[parallel]\nnproc_per_node = 1\nbackend = "gloo"\n'
                    '[logging]\ntensorboard = true\n')
    return path


@pytest.fixture
def no_tensorboard(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import tensorboard` raises ImportError, as when the extra is not installed; so does
    torch's writer module, which imports it."""
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)


def verify(recipe: Path, *extra: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["verify", str(recipe), "--json", "--stages", "recipe,plugins",
                                 *extra])
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.usefixtures("no_tensorboard")
def test_verify_names_the_key_and_the_fix(recipe: Path) -> None:
    code, report = verify(recipe)
    assert code == 2
    assert report["problems"] == [
        {"stage": "plugins", "path": "logging.tensorboard", "message": PROBLEM}]
    assert [s["status"] for s in report["stages"]] == ["ok", "failed"]


@pytest.mark.usefixtures("no_tensorboard")
def test_the_default_recipe_needs_no_tensorboard(recipe: Path) -> None:
    recipe.write_text(recipe.read_text().replace("tensorboard = true", ""))
    code, report = verify(recipe)
    assert (code, report["problems"]) == (0, [])


@pytest.mark.usefixtures("no_tensorboard")
def test_verify_prints_it_as_one_error_line(recipe: Path) -> None:
    result = runner.invoke(app, ["verify", str(recipe), "--stages", "recipe,plugins"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {recipe}: logging.tensorboard: {PROBLEM}"]


@pytest.mark.usefixtures("no_tensorboard")
def test_tensorboard_off_needs_no_tensorboard(recipe: Path) -> None:
    code, report = verify(recipe, "--set", "logging.tensorboard=false")
    assert code == 0, report["problems"]


def test_tensorboard_installed_is_no_problem(recipe: Path) -> None:
    pytest.importorskip("tensorboard")
    code, report = verify(recipe)
    assert code == 0, report["problems"]


@pytest.mark.usefixtures("no_tensorboard")
def test_train_stops_before_any_rank_with_the_same_problem(
        recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ctrlpost.cli.views import train as view

    launched: list[object] = []
    monkeypatch.setattr(view, "launch", lambda *a, **k: launched.append(a))
    # --synthetic: the recipe, plugins and layout stages, so this problem is the only one
    result = runner.invoke(app, ["train", str(recipe), "--synthetic"], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"error: {recipe}: 1 problem(s) before training; first: plugins: logging.tensorboard: "
        f"{PROBLEM}",
        f"hint: run `ctrlpost verify {recipe}` to see them all"]
    assert launched == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.toml"]  # no run folder


# `model.base_precision = "fp8-attention"` over video lengths needs the `fp8` extra (cuDNN's
# fused FP8 attention); the tiny recipe's short clips run the reference computation instead.

@pytest.fixture
def no_cudnn_frontend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cudnn", None)


@pytest.mark.usefixtures("no_cudnn_frontend")
def test_fp8_attention_at_video_length_without_the_extra_names_key_and_fix(recipe: Path) -> None:
    fp8 = ["--set", "logging.tensorboard=false", "--set", 'model.base_precision="fp8-attention"',
           "--set", 'model.precision="bf16"']
    code, report = verify(recipe, *fp8, "--set", 'model.flavor="7b"')
    assert code == 2
    [problem] = report["problems"]
    assert problem["path"] == "model.base_precision"
    assert "pip install 'ctrlpost[fp8]'" in problem["message"]
    assert 'model.base_precision = "fp8"' in problem["message"]
    # the tiny recipe's clips (17 frames at 128p): the reference computation runs them
    code, report = verify(recipe, *fp8, "--set", "data.num_frames=17", "--set",
                          'data.resolution="128"')
    assert (code, report["problems"]) == (0, [])


def test_fp8_attention_at_video_length_with_heads_cudnn_does_not_take_says_so(
        recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN's FP8 attention takes heads of 128 channels only: with the frontend installed, a
    flavor of other heads (the tiny one: 32) at video length is refused under its key."""
    monkeypatch.setitem(sys.modules, "cudnn", types.ModuleType("cudnn"))  # importable
    fp8 = ["--set", "logging.tensorboard=false", "--set", 'model.base_precision="fp8-attention"',
           "--set", 'model.precision="bf16"']
    code, report = verify(recipe, *fp8, "--set", "data.num_frames=121", "--set",
                          'data.resolution="720"')
    assert code == 2
    [problem] = report["problems"]
    assert problem["path"] == "model.base_precision"
    assert "takes heads of 128 channels; these have 32" in problem["message"]
    assert 'set model.base_precision = "fp8"' in problem["message"]
    # the 7b flavor's heads are 128 channels: nothing to refuse once the frontend is there
    code, report = verify(recipe, *fp8, "--set", 'model.flavor="7b"')
    assert (code, report["problems"]) == (0, [])
