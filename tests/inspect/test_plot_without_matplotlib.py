"""`inspect RUN --plot` without the `plot` extra: one line naming matplotlib and the extra, exit
2, no report printed and nothing written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ctrlpost.cli import app

runner = CliRunner()

LINE = "error: --plot needs matplotlib: pip install 'ctrlpost[plot]'"


@pytest.fixture
def run(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    rows = [{"step": s, "loss": 1.0 / s, "lr": 1e-3, "grad_norm": 0.5} for s in (1, 2, 3)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import matplotlib` raises ImportError, as when the extra is not installed."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)


@pytest.mark.usefixtures("no_matplotlib")
@pytest.mark.parametrize("as_json", [False, True])
def test_plot_without_matplotlib_is_one_line_naming_the_extra(
        run: Path, tmp_path: Path, as_json: bool) -> None:
    out = tmp_path / "plots" / "metrics.png"
    result = runner.invoke(app, ["inspect", str(run), "--plot", str(out),
                                 *(["--json"] if as_json else [])])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [LINE]
    assert result.stdout == ""  # no half report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no plots/, no PNG


@pytest.mark.usefixtures("no_matplotlib")
def test_inspect_without_plot_needs_no_matplotlib(run: Path) -> None:
    result = runner.invoke(app, ["inspect", str(run), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["plot"] is None
