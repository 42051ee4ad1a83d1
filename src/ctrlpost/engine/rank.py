"""The command a rank of `ctrlpost train` runs: ``python -m ctrlpost.engine.rank RECIPE ...``.

The parent-death guard is armed first, before torch and the engine are imported (seconds):
a launcher killed while its ranks start must not leave them waiting for a rendezvous that will
never come. Only the standard library is imported before it.
"""

from __future__ import annotations

import argparse
import sys

from ctrlpost.processes import die_with_launcher, launcher_from_environment


def main(argv: list[str]) -> None:
    """Parse the launcher's arguments and run the worker."""
    parser = argparse.ArgumentParser(prog="python -m ctrlpost.engine.rank")
    parser.add_argument("recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--synthetic", action="store_true")
    args = parser.parse_args(argv)

    from ctrlpost.engine.worker import WorkerOptions
    from ctrlpost.engine.worker import main as run_worker

    run_worker(args.recipe, args.overrides, WorkerOptions(synthetic=args.synthetic))


def command_line(recipe_path: str, overrides: list[str], *, synthetic: bool) -> list[str]:
    """The arguments :func:`main` parses, for the launcher."""
    args = [recipe_path]
    for override in overrides:
        args += ["--set", override]
    return [*args, "--synthetic"] if synthetic else args


if __name__ == "__main__":
    launcher = launcher_from_environment()
    if launcher is not None:
        die_with_launcher(launcher)
    main(sys.argv[1:])
