from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ctrlpost.cli import app, completion_script

runner = CliRunner()


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_committed_scripts_are_fresh(repo: Path, shell: str) -> None:
    committed = (repo / "completions" / f"ctrlpost.{shell}").read_text()
    assert committed == completion_script(shell), (
        f"completions/ctrlpost.{shell} is stale: run `nox -s completions`"
    )
    result = runner.invoke(app, ["completion", shell])
    assert result.exit_code == 0 and result.output == committed


def test_unknown_shell_is_an_input_error() -> None:
    result = runner.invoke(app, ["completion", "tcsh"])
    assert result.exit_code == 2


def complete(words: str, cwd: Path | None = None) -> list[str]:
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    env = {"COMP_WORDS": words, "COMP_CWORD": str(cword), "_CTRLPOST_COMPLETE": "complete_bash"}
    old = Path.cwd()
    try:
        if cwd:
            os.chdir(cwd)
        result = runner.invoke(app, [], env=env, prog_name="ctrlpost")
    finally:
        os.chdir(old)
    return result.output.split()


def in_order(expected: list[str], offered: list[str]) -> bool:
    """Whether ``expected`` appears in ``offered`` in this order (others may be in between)."""
    rest = iter(offered)
    return all(name in rest for name in expected)


def test_offers_subcommands_and_options() -> None:
    # Commands are added by several people: check ours are offered, in order, among others.
    offered = complete("ctrlpost ")
    assert in_order(["fetch-weights", "fetch-data", "annotate", "embed", "verify", "train",
                     "inspect", "modalities", "completion"], offered), offered
    assert complete("ctrlpost ve") == ["verify"]
    assert complete("ctrlpost fetch-data --") == [
        "--source", "--num-videos", "--workers", "--accept-partial", "--set", "--help"]
    assert complete("ctrlpost fetch-data recipe.toml --source ") == ["hdvila", "local",
                                                                      "synthetic"]
    assert in_order(["--set", "--json", "--show-recipe", "--stages", "--preview", "--help"],
                    complete("ctrlpost verify --"))
    assert complete("ctrlpost embed --") == [
        "--device", "--batch-size", "--batch-tokens", "--model", "--precision", "--set",
        "--help"]
    assert complete("ctrlpost embed r.toml --device c") == ["cpu", "cuda"]
    assert complete("ctrlpost verify x.toml --stages recipe,p") == ["recipe,plugins"]
    assert complete("ctrlpost completion ") == ["bash", "zsh", "fish"]


def test_offers_recipe_paths_and_modalities(repo: Path, tmp_path: Path) -> None:
    assert complete("ctrlpost verify recipes/", cwd=repo) == [
        f"recipes/{path.name}" for path in sorted((repo / "recipes").glob("*.toml"))]
    assert len(list((repo / "recipes").glob("*.toml"))) == 11
    assert complete("ctrlpost verify rec", cwd=repo) == ["recipes/"]
    (tmp_path / "a.toml").write_text("")
    (tmp_path / "b.txt").write_text("")
    assert complete("ctrlpost verify ", cwd=tmp_path) == ["a.toml"]
    assert complete("ctrlpost modalities ") == [
        "blur", "depth", "edge", "keypoint", "seg", "upscale"]
    assert complete("ctrlpost modalities e") == ["edge"]


def test_offers_folders_and_the_files_an_option_takes(tmp_path: Path) -> None:
    for name in ("run.toml", "notes.txt", "edge.pt", "sheet.png", ".hidden.toml"):
        (tmp_path / name).write_text("")
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "iter_1.pt").write_text("")
    assert complete("ctrlpost train ", cwd=tmp_path) == ["run.toml", "runs/"]
    assert complete("ctrlpost train .", cwd=tmp_path) == [".hidden.toml"]
    assert complete("ctrlpost inspect ", cwd=tmp_path) == ["edge.pt", "runs/"]
    assert complete("ctrlpost inspect runs/", cwd=tmp_path) == ["runs/a/"]
    assert complete("ctrlpost inspect runs/a/", cwd=tmp_path) == ["runs/a/iter_1.pt"]
    assert complete("ctrlpost inspect x.pt --diff ./e", cwd=tmp_path) == ["./edge.pt"]
    assert complete("ctrlpost inspect runs --plot ", cwd=tmp_path) == ["runs/", "sheet.png"]
    assert complete("ctrlpost verify run.toml --control ", cwd=tmp_path) == [
        "none", "edge.pt", "runs/"]
    assert complete("ctrlpost verify run.toml --clips ", cwd=tmp_path) == ["runs/"]
    assert complete("ctrlpost fetch-weights run.toml --dir r", cwd=tmp_path) == ["runs/"]
    assert complete(f"ctrlpost verify {tmp_path}/r") == [f"{tmp_path}/run.toml",
                                                          f"{tmp_path}/runs/"]
    assert complete("ctrlpost verify nowhere/") == []
