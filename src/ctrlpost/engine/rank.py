"""The command a rank of `ctrlpost train` runs:
``python -m ctrlpost.engine.rank <run>/.rank_recipe.json --recipe-name NAME [--synthetic]``.

The parent-death guard is armed first, before torch and the engine are imported (seconds):
a launcher killed while its ranks start must not leave them waiting for a rendezvous that will
never come. Only the standard library is imported before it.

A rank does not read the user's recipe file: the launcher validated it, overrides applied, and
wrote the result with :func:`write_recipe`; the rank loads exactly that (:func:`read_recipe`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ctrlpost.processes import die_with_launcher, launcher_from_environment

if TYPE_CHECKING:
    from ctrlpost.recipe import Recipe


def main(argv: list[str]) -> None:
    """Parse the launcher's arguments and run the worker on the recipe handed over."""
    parser = argparse.ArgumentParser(prog="python -m ctrlpost.engine.rank")
    parser.add_argument("recipe", help="the resolved recipe (JSON) written by the launcher")
    parser.add_argument("--recipe-name", required=True, help="the file name the user gave")
    parser.add_argument("--synthetic", action="store_true")
    args = parser.parse_args(argv)

    from ctrlpost.engine import build, worker

    plan = build.training_plan(read_recipe(args.recipe), recipe_name=args.recipe_name,
                               synthetic=args.synthetic)
    worker.main(plan)


def command_line(recipe_file: Path, *, recipe_name: str, synthetic: bool) -> list[str]:
    """The arguments :func:`main` parses, for the launcher."""
    args = [str(recipe_file), "--recipe-name", recipe_name]
    return [*args, "--synthetic"] if synthetic else args


def write_recipe(run_dir: Path, resolved: str) -> Path:
    """Write ``resolved`` (a recipe's JSON dump) where the ranks of ``run_dir`` read it,
    atomically; returns the file."""
    from ctrlpost import rundir
    from ctrlpost.files import write_text_atomic

    run_dir.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(run_dir / rundir.RANK_RECIPE, resolved)


def read_recipe(path: str | Path) -> Recipe:
    """The recipe :func:`write_recipe` wrote, validated again (it holds every override)."""
    import json

    from ctrlpost.errors import LaunchError
    from ctrlpost.recipe import validate

    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LaunchError(f"cannot read the recipe handed to this rank, {path}: {exc}") from None
    return validate(raw, file=str(path))


if __name__ == "__main__":
    launcher = launcher_from_environment()
    if launcher is not None:
        die_with_launcher(launcher)
    main(sys.argv[1:])
