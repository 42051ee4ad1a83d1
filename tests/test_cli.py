from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from ctrlpost import __version__
from ctrlpost.cli import app

runner = CliRunner()


def run_cli(exe: list[str], *args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*exe, *args], capture_output=True, text=True, env=full_env, cwd=cwd,
                          timeout=120)


def test_help_and_version() -> None:
    result = runner.invoke(app, ["--help"], prog_name="ctrlpost")
    assert result.exit_code == 0
    for command in ("verify", "modalities", "completion"):
        assert command in result.output
    result = runner.invoke(app, ["--version"], prog_name="ctrlpost")
    assert result.exit_code == 0 and result.output.strip() == f"ctrlpost {__version__}"


def test_verify_shipped_recipe_json(repo: Path) -> None:
    result = runner.invoke(app, ["verify", str(repo / "recipes/edge_hdvila.toml"), "--json",
                                 "--stages", "recipe,plugins"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True and report["problems"] == []
    assert [s["name"] for s in report["stages"]] == ["recipe", "plugins"]
    assert report["stages"][1]["summary"]["controls"] == ["edge"]


def test_verify_runs_every_stage_by_default(repo: Path) -> None:
    result = runner.invoke(app, ["verify", str(repo / "recipes/edge_hdvila.toml"), "--json",
                                 "--set", "weights.dir='/nonexistent'"])
    report = json.loads(result.output)
    names = [s["name"] for s in report["stages"]]
    assert names == ["recipe", "plugins", "weights", "data", "layout"]
    assert result.exit_code == 2 and {p["stage"] for p in report["problems"]} == {"weights", "data"}


def test_unknown_stage_is_an_input_error(repo: Path) -> None:
    result = runner.invoke(app, ["verify", str(repo / "recipes/edge_hdvila.toml"),
                                 "--stages", "recipe,wieghts"])
    assert result.exit_code == 2


def test_typo_exits_2_with_one_line(tmp_path: Path, ctrlpost_exe: list[str]) -> None:
    recipe = tmp_path / "typo.toml"
    recipe.write_text('[job]\nname = "x"\n[[control]]\nmodality = "edge"\n[train]\nstpes = 10\n')
    result = run_cli(ctrlpost_exe, "verify", str(recipe))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {recipe}: train.stpes: unknown key; did you mean 'steps'?"
    ]
    assert "Traceback" not in result.stdout + result.stderr
    shown = run_cli(ctrlpost_exe, "verify", str(recipe), "--show-recipe")
    assert shown.returncode == 2
    lines = shown.stderr.strip().splitlines()
    assert lines[0] == f"error: {recipe}: train.stpes: unknown key; did you mean 'steps'?"
    assert lines[1].startswith("hint: run `ctrlpost verify")


def test_verify_json_lists_plugin_problems(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('[job]\nname = "x"\n[[control]]\nmodality = "egde"\n[train]\nsteps = 1\n')
    stages = ["--stages", "recipe,plugins"]
    result = runner.invoke(app, ["verify", str(recipe), "--json", *stages])
    assert result.exit_code == 2
    report = json.loads(result.output)
    (problem,) = report["problems"]
    assert problem["stage"] == "plugins" and problem["path"] == "control[0].modality"
    assert "installed: blur, edge" in problem["message"]
    assert "did you mean 'edge'" in problem["message"]
    bad_params = runner.invoke(app, ["verify", str(recipe), "--json", *stages, "--set",
                                     "control.0.modality='edge'", "--set",
                                     "control.0.params={preset='loud'}"])
    assert bad_params.exit_code == 2
    (problem,) = json.loads(bad_params.output)["problems"]
    assert problem["path"] == "control[0].params.preset" and "edge plugin" in problem["message"]


def test_show_recipe_prints_resolved_toml(repo: Path) -> None:
    result = runner.invoke(app, ["verify", str(repo / "recipes/edge_tiny.toml"), "--show-recipe",
                                 "--set", "train.steps=3"])
    assert result.exit_code == 0
    assert "[train]\nsteps = 3\n" in result.output and "sigma_data = 0.5" in result.output


def test_missing_recipe_is_input_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["verify", str(tmp_path / "none.toml")])
    assert result.exit_code == 2


def test_internal_errors_are_one_line_unless_debug(tmp_path: Path, ctrlpost_exe: list[str]) -> None:
    # A directory where a recipe file is expected is a user error, not a crash.
    result = run_cli(ctrlpost_exe, "verify", str(tmp_path))
    assert result.returncode == 2 and "recipe not found" in result.stderr
    assert "Traceback" not in result.stderr
    debug = run_cli(ctrlpost_exe, "verify", str(tmp_path), "--show-recipe",
                    env={"CTRLPOST_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_modalities_lists_plugins() -> None:
    result = runner.invoke(app, ["modalities", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == ["blur", "edge"]
    assert rows[1]["from"].startswith("ctrlpost-edge")
    assert [r["fidelity"] for r in rows] == ["psnr", "f1"]  # the headline of each plugin's metric
    table = runner.invoke(app, ["modalities"])
    assert table.exit_code == 0 and "fidelity" in table.output and "psnr" in table.output
    one = runner.invoke(app, ["modalities", "edge", "--json"])
    assert "preset" in json.loads(one.output)["params"]["properties"]
    unknown = runner.invoke(app, ["modalities", "edgy"])
    assert unknown.exit_code == 2


def test_modalities_say_on_which_opencv_hints_are_exact() -> None:
    import cv2

    declared = {"blur": ">=4.10,<4.12", "edge": ">=4.10,<5.2"}
    for name, versions in declared.items():
        entry = json.loads(runner.invoke(app, ["modalities", name, "--json"]).output)["exact_on"]
        assert entry == [{"library": "OpenCV", "module": "cv2", "versions": versions,
                          "why": entry[0]["why"], "installed": cv2.__version__,
                          "exact": True}], "the install does not keep OpenCV in the exact range"
        shown = " ".join(runner.invoke(app, ["modalities", name]).output.split())
        assert f"byte-identical to the reference's on OpenCV {versions}" in shown
        assert f"OpenCV {cv2.__version__} in use: exact" in shown


def test_help_does_not_import_torch(ctrlpost_exe: list[str]) -> None:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "ctrlpost", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert "ctrlpost.cli" in imported
    heavy = {m for m in imported if m.split(".")[0] in {"torch", "transformers", "cv2"}}
    assert heavy == set()


def test_completion_does_not_import_torch() -> None:
    env = {**os.environ, "COMP_WORDS": "ctrlpost modalities ", "COMP_CWORD": "2",
           "_CTRLPOST_COMPLETE": "complete_bash"}
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "ctrlpost"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["blur", "edge"]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert not {m for m in imported if m.split(".")[0] == "torch"}
