"""`ctrlpost inspect`: layouts, counts, key accounting, EMA distance, --diff, run dirs, memory."""

from __future__ import annotations

import ctypes
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from ctrlpost.cli import app
from ctrlpost.diffusion.uncertainty import UncertaintyHead
from ctrlpost.inspect import compare as describe_compare
from ctrlpost.inspect import report as describe
from ctrlpost.inspect.plot import plot_series
from ctrlpost.inspect.run import read_metrics
from ctrlpost.models import (
    ControlledDiT,
    build_controlled_dit,
    get_flavor,
    released_layout,
    save_checkpoint,
    with_control_blocks,
)
from ctrlpost.models.state_dict import (
    BASE_LOGVAR_PREFIX,
    BASE_NET_PREFIX,
    export_control_state_dict,
)

runner = CliRunner()
Tensors = dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def tiny() -> ControlledDiT:
    torch.manual_seed(0)
    model = build_controlled_dit(get_flavor("tiny"))
    model.init_weights()
    return model


@pytest.fixture(scope="module")
def base_state(tiny: ControlledDiT) -> Tensors:
    state = {BASE_NET_PREFIX + k: v for k, v in tiny.base.state_dict().items()}
    head = UncertaintyHead(generator=torch.Generator().manual_seed(0))
    state.update({BASE_LOGVAR_PREFIX + k: v for k, v in head.state_dict().items()})
    return state


@pytest.fixture(scope="module")
def control_state(tiny: ControlledDiT) -> Tensors:
    return export_control_state_dict(tiny.control)


def inspect_json(*args: str | Path) -> dict[str, Any]:
    result = runner.invoke(app, ["inspect", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def numel(tensors: Any) -> int:
    return sum(t.numel() for t in tensors)


# --- layouts and counts -------------------------------------------------------------------------


def test_base_file(tmp_path: Path, tiny: ControlledDiT, base_state: Tensors) -> None:
    path = save_checkpoint(base_state, tmp_path / "base_model.pt")
    report = inspect_json(path)
    assert (report["flavor"], report["part"]) == ("tiny", "base")
    assert report["num_control_blocks"] is None
    params = report["params"]
    assert params["base"] == numel(tiny.base.parameters()) == 1_285_760
    assert (params["control"], params["trainable"], params["logvar"]) == (0, 0, 128)
    assert params["buffers"] == numel(tiny.base.buffers()) + 2 * 128  # seq + Fourier features
    assert params["total"] + params["buffers"] == numel(base_state.values())
    assert report["key_problems"] == {"missing": [], "unexpected": [], "shape": []}
    assert report["dtypes"] == {"float32": len(base_state)}
    assert report["file_bytes"] == path.stat().st_size
    assert report["iteration"] is None
    assert report["ema"] == {"present": False, "reg_file": None, "ema_file": None}
    table = runner.invoke(app, ["inspect", str(path)])
    assert table.exit_code == 0 and "tiny (base)" in table.output and "1,285,760" in table.output


def test_control_file(tmp_path: Path, tiny: ControlledDiT, control_state: Tensors) -> None:
    report = inspect_json(save_checkpoint(control_state, tmp_path / "edge_control.pt"))
    assert (report["flavor"], report["part"], report["num_control_blocks"]) == (
        "tiny", "control", 3)
    assert report["params"]["control"] == report["params"]["trainable"]
    assert report["params"]["control"] == numel(tiny.control.parameters())
    assert report["key_problems"] == {"missing": [], "unexpected": [], "shape": []}


def test_control_blocks_are_counted_from_the_keys() -> None:
    flavor = with_control_blocks(get_flavor("tiny"), 2)
    layout = describe.describe_layout(released_layout(flavor, "control"))
    assert (layout.flavor, layout.num_control_blocks, layout.problems) == ("tiny", 2, ())


def test_7b_layout_counts_on_the_meta_device() -> None:
    flavor = get_flavor("7b")
    base = describe.describe_layout(released_layout(flavor, "base"))
    assert (base.flavor, base.part, base.problems) == ("7b", "base", ())
    assert base.params.base == 7_236_208_640
    control = describe.describe_layout(released_layout(flavor, "control"))
    assert (control.flavor, control.part, control.num_control_blocks) == ("7b", "control", 3)
    assert control.params.control == control.params.trainable == 893_497_120
    assert control.problems == ()


def test_tampered_file_lists_exactly_the_bad_keys(tmp_path: Path, control_state: Tensors) -> None:
    renamed = "net.blocks.block1.blocks.0.block.attn.to_q.0.weight"
    reshaped = "net.zero_blocks.block2.weight"
    state = dict(control_state)
    state["net.blocks.block1.blocks.0.block.attn.to_query.0.weight"] = state.pop(renamed)
    state[reshaped] = torch.zeros(128, 64)
    path = save_checkpoint(state, tmp_path / "tampered.pt")
    report = inspect_json(path)
    assert report["flavor"] is None and report["closest_flavor"] == "tiny"
    assert report["key_problems"] == {
        "missing": [renamed],
        "unexpected": ["net.blocks.block1.blocks.0.block.attn.to_query.0.weight"],
        "shape": [{"key": reshaped, "expected": [128, 128], "found": [128, 64]}],
    }
    table = runner.invoke(app, ["inspect", str(path)]).output
    assert "matches no flavor" in table and renamed in table and reshaped in table


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a checkpoint", "cannot read checkpoint"),
        ({"model": {"w": torch.zeros(1)}}, "not a flat name"),
        ({"w": torch.zeros(1)}, "not a Cosmos-Transfer1 checkpoint"),
    ],
)
def test_unreadable_files_are_one_line_errors(tmp_path: Path, content: Any, message: str) -> None:
    path = tmp_path / "x.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2 and message in result.output
    assert result.output.count("error:") == 1


def test_bad_paths_and_flags_exit_2(tmp_path: Path, control_state: Tensors) -> None:
    run = tmp_path / "run"
    path = save_checkpoint(control_state, run / "checkpoints" / "a.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases: list[tuple[list[str | Path], str]] = [
        ([tmp_path / "missing.pt"], "no such file"),
        ([path, "--plot", tmp_path / "x.png"], f"ctrlpost inspect {run} --plot"),
        ([run, "--diff", path], "two checkpoint files"),
        ([path, "--diff", tmp_path / "nope.pt"], "no such file"),
        ([empty], "not a run directory"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["inspect", *map(str, args)])
        assert result.exit_code == 2 and message in result.output, (args, result.output)


# --- values: EMA distance and --diff ------------------------------------------------------------


def shifted(state: Tensors, seed: int, scale: float) -> tuple[Tensors, Tensors]:
    """``state + delta`` and ``delta`` with a known random delta on every floating tensor."""
    generator = torch.Generator().manual_seed(seed)
    delta = {k: scale * torch.randn(v.shape, generator=generator) for k, v in state.items()}
    return {k: v + delta[k] for k, v in state.items()}, delta


def test_ema_distance_beside_a_regular_export(tmp_path: Path, control_state: Tensors) -> None:
    reg = save_checkpoint(control_state, tmp_path / "iter_000000040_reg_model.pt")
    ema_state, delta = shifted(control_state, seed=1, scale=1e-3)
    ema = save_checkpoint(ema_state, tmp_path / "iter_000000040_ema_model.pt")
    expected = math.sqrt(sum(float(d.double().square().sum()) for d in delta.values())
                         / sum(float(v.double().square().sum()) for v in control_state.values()))
    for path in (reg, ema):
        report = inspect_json(path)
        assert report["iteration"] == 40
        assert report["ema"]["present"] is True
        assert (report["ema"]["reg_file"], report["ema"]["ema_file"]) == (str(reg), str(ema))
        assert report["ema"]["relative_l2"] == pytest.approx(expected, rel=1e-5)
        block0 = [d for k, d in delta.items() if k.startswith("net.blocks.block0.")]
        assert report["ema"]["modules"]["net.blocks.block0"]["max_abs"] == pytest.approx(
            max(float(d.abs().max()) for d in block0), rel=1e-4)


def test_sidecar_gives_iteration_recipe_and_versions(
    tmp_path: Path, repo: Path, control_state: Tensors
) -> None:
    path = save_checkpoint(control_state, tmp_path / "iter_000000007_reg_model.pt")
    recipe = (repo / "recipes" / "edge_tiny.toml").read_text()
    (tmp_path / "iter_000000007.json").write_text(json.dumps(
        {"iteration": 8, "recipe": recipe, "versions": {"torch": "2.13.0"}, "ema_s": 0.1}))
    report = inspect_json(path)
    assert report["iteration"] == 8  # the sidecar wins over the file name
    assert report["recipe"]["job"]["name"] == "edge_tiny"
    assert report["versions"] == {"torch": "2.13.0"}


def test_diff_reports_the_changed_module_only(tmp_path: Path, control_state: Tensors) -> None:
    a = save_checkpoint(control_state, tmp_path / "a.pt")
    key = "net.blocks.block1.blocks.2.block.layer1.weight"
    changed = dict(control_state)
    changed[key] = control_state[key] + 0.5
    dropped = "net.final_layer.linear.weight"
    del changed[dropped]
    b = save_checkpoint(changed, tmp_path / "b.pt")
    report = inspect_json(a, "--diff", b)
    assert report["changed_modules"] == ["net.blocks.block1"]
    assert (report["only_in_a"], report["only_in_b"]) == ([dropped], [])
    module = report["modules"]["net.blocks.block1"]
    block1 = [v for k, v in control_state.items() if k.startswith("net.blocks.block1.")]
    norm = math.sqrt(sum(float(v.double().square().sum()) for v in block1))
    assert module["max_abs"] == pytest.approx(0.5)
    assert module["relative"] == pytest.approx(0.5 * math.sqrt(control_state[key].numel()) / norm,
                                               rel=1e-5)
    table = runner.invoke(app, ["inspect", str(a), "--diff", str(b)]).output
    assert "net.blocks.block1" in table and "net.blocks.block0" not in table
    assert "1 module(s) changed" in table


def test_module_grouping() -> None:
    assert describe_compare.module_of("net.blocks.block0.blocks.1.block.attn.to_k.0.weight") == (
        "net.blocks.block0")
    assert describe_compare.module_of("net.zero_blocks.block2.bias") == "net.zero_blocks"
    assert describe_compare.module_of("base_model.net.blocks.block12.blocks.0.x") == (
        "base_model.net.blocks.block12")
    assert describe_compare.module_of("base_model.logvar.0.freqs") == "base_model.logvar"


# --- run directories ----------------------------------------------------------------------------


def write_run(root: Path, repo: Path, control_state: Tensors) -> Path:
    (root / "recipe.toml").parent.mkdir(parents=True)
    (root / "recipe.toml").write_text((repo / "recipes" / "edge_tiny.toml").read_text())
    (root / "versions.json").write_text(json.dumps({"ctrlpost": "0.1.0", "torch": "2.13.0"}))
    rows: list[dict[str, Any]] = [
        {"step": s, "loss": 2.0 / s, "lr": 1e-3 * min(1.0, s / 5), "grad_norm": 1.0 + s / 10,
         "samples_per_s": 3.5}
        for s in range(1, 41)
    ]
    rows[19]["fidelity_edge_f1"] = 0.2
    rows[39]["fidelity_edge_f1"] = 0.35
    rows[39]["fidelity"] = {"hint_l1": 0.1}  # nested tables become dotted columns
    lines = [json.dumps(r) for r in rows] + ['{"step": 41, "lo']  # a line being written
    (root / "metrics.jsonl").write_text("\n".join(lines))
    checkpoints = root / "checkpoints"
    (checkpoints / "step_000000020").mkdir(parents=True)
    (checkpoints / "step_000000020" / "meta.json").write_text("{}")
    (checkpoints / "step_000000040").mkdir()  # interrupted: no meta.json
    save_checkpoint(control_state, checkpoints / "iter_000000020_reg_model.pt")
    save_checkpoint(control_state, checkpoints / "iter_000000040_reg_model.pt")
    save_checkpoint(shifted(control_state, 2, 1e-3)[0], checkpoints / "iter_000000040_ema_model.pt")
    return root


def test_run_directory_summary(tmp_path: Path, repo: Path, control_state: Tensors) -> None:
    run = write_run(tmp_path / "run", repo, control_state)
    report = inspect_json(run)
    summary = report["run"]
    assert summary["recipe_name"] == "edge_tiny"
    metrics = summary["metrics"]
    assert (metrics["steps_logged"], metrics["first_step"], metrics["last_step"]) == (40, 1, 40)
    assert (metrics["first_loss"], metrics["last_loss"]) == (2.0, 0.05)
    assert (metrics["last_lr"], metrics["last_grad_norm"]) == (1e-3, 5.0)
    assert metrics["extra"] == {"fidelity.hint_l1": 0.1, "fidelity_edge_f1": 0.35}
    assert summary["bad_metric_lines"] == 0
    assert summary["checkpoints"] == {
        "complete_steps": [20],
        "incomplete": ["step_000000040"],
        "exports": ["iter_000000020_reg_model.pt", "iter_000000040_ema_model.pt",
                    "iter_000000040_reg_model.pt"],
    }
    checkpoint = report["checkpoint"]
    assert checkpoint["path"].endswith("iter_000000040_reg_model.pt")
    assert checkpoint["flavor"] == "tiny" and checkpoint["ema"]["present"] is True
    assert checkpoint["recipe"]["job"]["name"] == "edge_tiny"  # from <run>/recipe.toml
    assert checkpoint["versions"] == {"ctrlpost": "0.1.0", "torch": "2.13.0"}
    table = runner.invoke(app, ["inspect", str(run)]).output
    assert "edge_tiny" in table and "step 20" in table and "step_000000040" in table


def test_plot_writes_a_png(tmp_path: Path, repo: Path, control_state: Tensors) -> None:
    run = write_run(tmp_path / "run", repo, control_state)
    out = tmp_path / "plots" / "metrics.png"
    report = inspect_json(run, "--plot", out)
    assert report["plot"] == str(out)
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["metrics.png"]  # no temp file left
    rows, bad = read_metrics(run / "metrics.jsonl")
    assert bad == 0 and len(rows) == 40
    assert list(plot_series(rows)) == ["loss", "lr", "grad_norm", "fidelity.hint_l1",
                                       "fidelity_edge_f1"]


def test_run_lists_validation_strips_and_counts_training_records(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for step, names in ((0, ["a.png", "b.png"]), (10, ["a.png", "b.png"])):
        folder = run / "validation" / f"step_{step:09d}"
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_bytes(b"\x89PNG")
        (folder / "scores.json").write_text("{}")
    rows = [{"step": 0, "fidelity": {"f1": 0.5, "f1_noise": 0.4}, "validation_s": 2.0},
            {"step": 10, "loss": 1.0, "lr": 1e-3, "grad_norm": 1.0},
            {"step": 10, "fidelity": {"f1": 0.6, "f1_noise": 0.4}, "validation_s": 2.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = inspect_json(run)["run"]
    assert summary["metrics"]["steps_logged"] == 1  # validation records are not steps
    assert summary["metrics"]["extra"] == {"fidelity.f1": 0.6, "fidelity.f1_noise": 0.4,
                                           "validation_s": 2.5}
    assert summary["validation"]["steps"] == [0, 10]
    assert [Path(p).name for p in summary["validation"]["strips"]["10"]] == ["a.png", "b.png"]
    table = runner.invoke(app, ["inspect", str(run)]).output
    assert "2 (steps 0, 10)" in table
    assert str(run / "validation" / "step_000000010" / "b.png") in table


# --- memory -------------------------------------------------------------------------------------


def rss_anon_bytes() -> int:
    """Live anonymous memory: the allocator's cache of freed blocks is returned first."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pytest.skip("needs glibc's malloc_trim")
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^RssAnon:\s+(\d+) kB", status, re.MULTILINE)
    if match is None:
        pytest.skip("needs /proc/self/status with RssAnon (Linux)")
    return int(match.group(1)) * 1024


def test_values_are_read_one_tensor_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two 48 MB files of bf16 tensors: if they were loaded rather than memory-mapped, their
    # 96 MB would be anonymous memory while the pairs are compared.
    state = {f"net.blocks.block0.w{i}": torch.zeros(2_000_000, dtype=torch.bfloat16)
             for i in range(12)}
    a = save_checkpoint(state, tmp_path / "iter_000000001_reg_model.pt")
    save_checkpoint({k: v + 1 for k, v in state.items()}, tmp_path / "iter_000000001_ema_model.pt")
    del state
    seen: list[int] = []
    original = describe_compare.pair_stats

    def watched(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
        seen.append(rss_anon_bytes())
        return original(x, y)

    monkeypatch.setattr(describe_compare, "pair_stats", watched)
    before = rss_anon_bytes()
    report = describe.describe_checkpoint(a)
    assert report.ema.comparison is not None and report.ema.comparison.max_abs == 1.0
    assert len(seen) == 12
    assert max(seen) - before < 40_000_000, [(s - before) // 1_000_000 for s in seen]



def test_the_modality_comes_from_the_recorded_recipe_or_the_released_file_name() -> None:
    from ctrlpost.inspect.report import modality_of
    from ctrlpost.inspect.run import Provenance

    ours = Provenance(recipe={"control": [{"modality": "seg", "weight": 1.0}]})
    assert modality_of(Path("run/checkpoints/iter_000000040_ema_model.pt"), ours) == "seg"
    released = {"vis_control.pt": "blur", "edge_control.pt": "edge",
                "depth_control.pt": "depth", "4kupscaler_control.pt": "upscale"}
    for name, modality in released.items():
        assert modality_of(Path("checkpoints/nvidia/Cosmos-Transfer1-7B") / name,
                           Provenance()) == modality
    assert modality_of(Path("my_branch.pt"), Provenance()) is None
