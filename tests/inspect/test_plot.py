"""`inspect RUN --plot`: value axes read against the floor and ceiling, every line in a legend,
and a path that cannot be written is one line with nothing left behind."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ctrlpost.cli import app
from ctrlpost.inspect.plot import draw_metrics

runner = CliRunner()


def training_rows(steps: int = 20) -> list[dict[str, Any]]:
    return [{"step": s, "loss": 1.0 / s, "lr": 1e-3 * min(1.0, s / 5), "grad_norm": 0.5 + s / 100}
            for s in range(1, steps + 1)]


def validation_row(step: int, f1: float, *, references: bool = True) -> dict[str, Any]:
    # Flattened as read_metrics gives it: {"fidelity": {...}} → "fidelity.<key>".
    row = {"step": step, "fidelity.f1": f1, "fidelity.precision": 0.4 + step / 1e5}
    if references:
        row |= {"fidelity.f1_noise": 0.25, "fidelity.f1_reconstruction": 0.8}
    return row


def legend_texts(ax: Any) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_the_metric_axis_spans_its_floor_and_ceiling_with_a_little_padding() -> None:
    rows = [*training_rows(), *(validation_row(s, 0.300 + s / 10_000) for s in (5, 10, 15, 20))]
    panel = draw_metrics(rows, title="t").panels["fidelity.f1"]
    low, high = panel.get_ylim()
    span = 0.8 - 0.25
    assert 0.25 - 0.15 * span < low < 0.25 and 0.8 < high < 0.8 + 0.15 * span
    # The 0.0015 change in F1 (0.3005 → 0.302) moves the line by under 1 % of the panel.
    assert 0.0015 / (high - low) < 0.01


def test_a_metric_without_references_is_not_blown_up_by_a_tiny_change() -> None:
    rows = [*training_rows(), *(validation_row(s, 0.3, references=False) for s in (10, 20))]
    drawn = draw_metrics(rows, title="t")
    for name, value in (("fidelity.f1", 0.3), ("fidelity.precision", 0.4)):
        low, high = drawn.panels[name].get_ylim()
        assert high - low >= 0.1 * value  # 0.4001 → 0.4002 is a flat line, not a swing
    low, high = drawn.panels["fidelity.precision"].get_ylim()
    assert low < 0.4001 and high > 0.4002


def test_every_line_is_named_in_its_panels_legend() -> None:
    rows = [*training_rows(), *(validation_row(s, 0.3) for s in (10, 20))]
    drawn = draw_metrics(rows, title="t")
    expected = {"loss": ["loss"], "lr": ["learning rate"], "grad_norm": ["grad norm"],
                "fidelity.f1": ["f1", "floor (noise)", "ceiling (tokenizer)"],
                "fidelity.precision": ["precision"]}
    assert {name: legend_texts(ax) for name, ax in drawn.panels.items()} == expected
    for ax in drawn.panels.values():
        assert [line.get_label() for line in ax.get_lines()] == legend_texts(ax)
    assert drawn.panels["lr"].get_yscale() == "log"  # warm-up spans decades


def test_references_recorded_once_are_still_drawn_and_in_range() -> None:
    rows = [*training_rows(), validation_row(20, 0.3)]
    panel = draw_metrics(rows, title="t").panels["fidelity.f1"]
    assert legend_texts(panel) == ["f1", "floor (noise)", "ceiling (tokenizer)"]
    floor, ceiling = (line for line in panel.get_lines() if line.get_label() != "f1")
    assert list(floor.get_ydata()) == [0.25, 0.25] and list(ceiling.get_ydata()) == [0.8, 0.8]
    low, high = panel.get_ylim()
    assert low < 0.25 and high > 0.8


# --- writing the PNG ----------------------------------------------------------------------------


@pytest.fixture
def run(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    rows = [*training_rows(), {"step": 20, "fidelity": {"f1": 0.3, "f1_noise": 0.25}}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def plot_error(run: Path, out: Path | str) -> list[str]:
    result = runner.invoke(app, ["inspect", str(run), "--plot", str(out)])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""  # the report is not printed when its plot failed
    return result.stderr.splitlines()


def test_a_plot_where_no_file_can_be_made_is_one_line_naming_the_path(run: Path) -> None:
    (line,) = plot_error(run, "/proc/ctrlpost_plot.png")
    assert line.startswith("error: cannot write the plot /proc/ctrlpost_plot.png: ")
    assert line.endswith("; pass --plot a path in a folder you can write to")
    assert "internal error" not in line and ".tmp" not in line
    (line,) = plot_error(run, "/proc/ctrlpost_new/plot.png")  # its folder cannot be made
    assert line.startswith("error: cannot write the plot /proc/ctrlpost_new/plot.png: ")
    assert not Path("/proc/ctrlpost_new").exists()


def test_a_plot_under_a_file_or_onto_a_folder_is_one_line(run: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file")
    assert plot_error(run, blocker / "sub" / "plot.png") == [
        f"error: cannot write the plot {blocker / 'sub' / 'plot.png'}: {blocker} is a file, not "
        "a folder; pass --plot a path in a folder you can write to"]
    assert plot_error(run, tmp_path) == [
        f"error: cannot write the plot {tmp_path}: it is a folder; name a PNG file in it, e.g. "
        f"--plot {tmp_path / 'metrics.png'}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "run"]


def test_a_plot_into_missing_folders_makes_them(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "plots" / "new" / "metrics.png"
    result = runner.invoke(app, ["inspect", str(run), "--plot", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["plot"] == str(out)
    assert out.read_bytes().startswith(b"\x89PNG") and os.listdir(out.parent) == ["metrics.png"]


def test_a_plot_that_fails_half_way_leaves_no_file_and_no_new_folder(
        run: Path, tmp_path: Path, ctrlpost_exe: list[str]) -> None:
    # A file-size limit makes the write itself fail (EFBIG) after the folders were made: the
    # real failure of a full disk, without filling one.
    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    out = tmp_path / "plots" / "new" / "metrics.png"
    result = subprocess.run([*ctrlpost_exe, "inspect", str(run), "--plot", str(out)],
                            capture_output=True, text=True, timeout=120,
                            preexec_fn=limit_file_size,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"error: cannot write the plot {out}: file too large; pass --plot a path in a folder "
        "you can write to"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no plots/, no temp file
