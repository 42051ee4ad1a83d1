"""The run folder's names: one place, and the patterns read back what the names write."""

from __future__ import annotations

from pathlib import Path

from ctrlpost import rundir
from ctrlpost.recipe_bounds import MAX_STEPS
from ctrlpost.rundir import RunDir


def test_run_folder_paths() -> None:
    run = RunDir(Path("out/p/g/job"))
    assert run.recipe == Path("out/p/g/job/recipe.toml")
    assert run.rank_log(3) == Path("out/p/g/job/logs/rank3.log")
    assert run.launcher_logs == Path("out/p/g/job/logs/launcher")
    assert run.step_dir(20) == Path("out/p/g/job/checkpoints/step_000000020")
    assert [p.name for p in run.exports(20)] == [
        "iter_000000020_reg_model.pt", "iter_000000020_ema_model.pt", "iter_000000020.json"]
    assert run.scores(5) == Path("out/p/g/job/validation/step_000000005/scores.json")
    assert run.lock.name == ".train.lock"


def test_names_and_patterns_agree() -> None:
    assert rundir.step_of(rundir.step_name(MAX_STEPS)) == MAX_STEPS
    assert rundir.step_of("step_20") is None and rundir.step_of(".step_000000020.tmp") is None
    for name in rundir.export_names(7):
        assert rundir.EXPORT.match(name)
    assert [bool(rundir.EXPORT_WEIGHTS.match(n)) for n in rundir.export_names(7)] == [
        True, True, False]
