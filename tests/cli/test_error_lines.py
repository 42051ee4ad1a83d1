"""A recipe that is missing or not TOML: the same one line, naming the file once, from every
command that takes a recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ctrlpost.cli import app

runner = CliRunner()

RECIPE_COMMANDS = ["train", "verify", "embed", "fetch-data", "fetch-weights", "annotate"]
FIX = "pass the path of a TOML recipe, e.g. recipes/edge_tiny.toml"


def error_lines(*args: str) -> tuple[int, list[str], str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "80"})
    return result.exit_code, result.stderr.splitlines(), result.stdout


@pytest.mark.parametrize("command", RECIPE_COMMANDS)
def test_a_missing_recipe_is_one_line_with_its_path_and_the_fix(
        command: str, tmp_path: Path) -> None:
    missing = tmp_path / "no_such.toml"
    code, lines, stdout = error_lines(command, str(missing))
    assert code == 2
    assert lines == [f"error: {missing}: recipe not found; {FIX}"]
    assert stdout == ""  # no stage table, no half report


@pytest.mark.parametrize("command", RECIPE_COMMANDS)
def test_a_toml_syntax_error_names_the_file_once_with_line_and_column(
        command: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[job]\nname = "x"\n[train\nsteps = 1\n')
    code, lines, _ = error_lines(command, str(bad))
    assert code == 2
    assert lines == [f"error: {bad}:3:7: invalid TOML: Expected ']' at the end of a table "
                     "declaration"]


def test_a_toml_error_at_the_end_of_the_file_points_at_its_last_character(
        tmp_path: Path) -> None:
    bad = tmp_path / "cut.toml"
    bad.write_text('[job]\nname = ')
    code, lines, _ = error_lines("verify", str(bad))
    assert code == 2 and lines == [f"error: {bad}:2:8: invalid TOML: Invalid value"]


def test_a_folder_or_a_binary_file_for_a_recipe_is_one_line(tmp_path: Path) -> None:
    code, lines, _ = error_lines("train", str(tmp_path))
    assert code == 2 and lines == [f"error: {tmp_path}: recipe not found (this is a folder); "
                                   f"{FIX}"]
    binary = tmp_path / "r.toml"
    binary.write_bytes(b"\xff\xfe[job]\n")
    code, lines, _ = error_lines("verify", str(binary))
    assert code == 2 and lines == [f"error: {binary}: not a UTF-8 text file; save the recipe "
                                   "as UTF-8 TOML"]


def test_a_recipe_with_bad_values_still_gets_the_verify_report(tmp_path: Path) -> None:
    # Only an unreadable file skips the report: a readable recipe's problems are all listed.
    recipe = tmp_path / "r.toml"
    recipe.write_text('[job]\nname = "x"\n[[control]]\nmodality = "edge"\n[train]\nsteps = -1\n')
    code, lines, stdout = error_lines("verify", str(recipe), "--stages", "recipe")
    assert code == 2 and "failed" in stdout
    assert len(lines) == 1 and lines[0].startswith(f"error: {recipe}: train.steps: ")
