from __future__ import annotations

from pathlib import Path


def test_ci_runs_the_readme_test_command(repo: Path) -> None:
    ci_lines = [line for line in (repo / ".ci/run").read_text().splitlines()
                if line and not line.startswith(("#", "set ", "cd "))]
    assert len(ci_lines) == 1
    assert ci_lines[0] in (repo / "README.md").read_text()


def test_readme_names_every_shipped_recipe(repo: Path) -> None:
    readme = (repo / "README.md").read_text()
    for recipe in sorted((repo / "recipes").glob("*.toml")):
        assert f"recipes/{recipe.name}" in readme
