"""How the launcher reports a failed rank: a Python error, or a native crash of a library."""

from __future__ import annotations

import faulthandler
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ctrlpost import recipe as recipes
from ctrlpost import rundir
from ctrlpost.cli import app
from ctrlpost.engine.job import TrainingPlan
from ctrlpost.engine.launch import last_error, rank_failure
from ctrlpost.engine.worker import crash_traces
from ctrlpost.processes import LAUNCHER_ENV
from ctrlpost.recipe import Recipe

from .conftest import TINY

CRASHING_RANK = """
import faulthandler, sys
from pathlib import Path
from ctrlpost.engine.worker import crash_traces

def inside_a_library():
    faulthandler._sigsegv()

with crash_traces(Path(sys.argv[1]), until_exit=True):
    inside_a_library()
"""


def test_a_segfaulting_rank_is_reported_with_its_signal_and_crashing_frame(tmp_path: Path) -> None:
    log = tmp_path / "rank1.log"
    log.write_text("2026-12-05 08:38:20,000 INFO ctrlpost.engine: an earlier record\n")
    crashed = subprocess.run([sys.executable, "-c", CRASHING_RANK, str(log)],
                             capture_output=True, text=True, timeout=120)
    assert crashed.returncode == -11, crashed.stderr
    message = str(rank_failure(tmp_path, 1, crashed.returncode))
    assert message.startswith("rank 1 was killed by SIGSEGV: Fatal Python error: Segmentation "
                              "fault in File "), message
    assert "line 7 in inside_a_library" in message, message
    assert message.endswith(f"; see {log}")
    assert "\n" not in message


def test_a_python_error_after_an_earlier_crash_is_the_one_reported(tmp_path: Path) -> None:
    log = tmp_path / "rank0.log"
    log.write_text(
        "Fatal Python error: Segmentation fault\n\n"
        "Current thread 0x00007f (most recent call first):\n"
        '  File "/old/attempt.py", line 3 in step\n'
        "2026-12-05 09:00:00,000 ERROR ctrlpost.engine: rank 0 failed:\n"
        "Traceback (most recent call last):\n"
        '  File "/x.py", line 1, in <module>\n'
        "ValueError: data.root does not exist\n")
    assert last_error(log) == "ValueError: data.root does not exist"
    assert str(rank_failure(tmp_path, 0, 1)).startswith(
        "rank 0 failed (exit code 1): ValueError: data.root does not exist; see ")


def test_a_rank_without_a_log_says_so(tmp_path: Path) -> None:
    assert last_error(tmp_path / "rank3.log") == "no log written"
    (tmp_path / "rank2.log").write_text("\n")
    assert last_error(tmp_path / "rank2.log") == "empty log"


def test_the_in_process_rank_gives_the_crash_handler_back(tmp_path: Path) -> None:
    was_enabled = faulthandler.is_enabled()
    with crash_traces(tmp_path / "rank0.log", until_exit=False):
        assert faulthandler.is_enabled()
    assert faulthandler.is_enabled() == was_enabled


def test_a_user_error_of_a_rank_is_reported_without_its_class_path(tmp_path: Path) -> None:
    log = tmp_path / "rank0.log"
    log.write_text("Traceback (most recent call last):\n"
                   '  File "/x.py", line 1, in <module>\n'
                   "ctrlpost.errors.LaunchError: checkpoint step_2 is damaged (missing shard)\n")
    assert last_error(log) == "checkpoint step_2 is damaged (missing shard)"


def test_a_failed_launched_rank_exits_1_with_its_traceback_only_in_its_log(
        tmp_path: Path) -> None:
    """Under a launcher the console gets the launcher's one line, not the rank's traceback."""
    import os

    code = ("from ctrlpost.engine import build, worker\n"
            "from ctrlpost.recipe import load\n"
            "def boom(*args, **kwargs):\n"
            "    raise ValueError('boom')\n"
            "worker.train = boom\n"
            f"recipe = load({str(TINY)!r}, [\"job.output_root='{tmp_path}'\"])\n"
            "worker.main(build.training_plan(recipe, recipe_name='edge_tiny.toml'))")
    env = {**os.environ, "TORCHELASTIC_RUN_ID": "test", "RANK": "0", "WORLD_SIZE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    logs = list(tmp_path.rglob("rank0.log"))
    assert len(logs) == 1 and last_error(logs[0]) == "ValueError: boom"


# --- the recipe: loaded once by the command, handed to the ranks resolved -----------------------


@dataclass
class Seen:
    """What a `ctrlpost train` run in this process did with its recipe."""

    toml_reads: list[Path] = field(default_factory=list)  # the user's file, read as TOML
    plans: list[tuple[Recipe, str, TrainingPlan]] = field(default_factory=list)  # made from
    ran: list[TrainingPlan] = field(default_factory=list)  # what the worker received
    rank_args: list[tuple[str, ...]] = field(default_factory=list)


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Seen:
    """Record every read of a TOML recipe, every plan made and every worker started (which
    trains nothing)."""
    from ctrlpost.engine import build, worker

    record = Seen()
    read_toml, training_plan = recipes.read_toml, build.training_plan

    def reading(path: str | Path) -> dict[str, Any]:
        record.toml_reads.append(Path(path))
        return read_toml(path)

    def planning(recipe: Recipe, *, recipe_name: str, synthetic: bool = False) -> TrainingPlan:
        plan = training_plan(recipe, recipe_name=recipe_name, synthetic=synthetic)
        record.plans.append((recipe, recipe_name, plan))
        return plan

    monkeypatch.setattr(recipes, "read_toml", reading)
    monkeypatch.setattr(build, "training_plan", planning)
    monkeypatch.setattr(worker, "main", lambda plan, **_: record.ran.append(plan))
    # The launcher names itself in the environment and sets a thread count for its ranks.
    monkeypatch.setenv(LAUNCHER_ENV, "")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    return record


def overrides(output: Path) -> list[str]:
    # A value with quotes and a backslash, and a value of another type than the file's.
    return [f"job.output_root={json.dumps(str(output))}",
            'data.root="it\'s a \\"quoted\\" \\\\ root"', "train.steps=3"]


def train_command(recipe: Path, output: Path, *args: str) -> list[str]:
    return ["train", str(recipe), "--synthetic", *args,
            *[arg for text in overrides(output) for arg in ("--set", text)]]


def user_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "my_recipe.toml"
    shutil.copyfile(TINY, path)
    return path


def test_train_loads_the_recipe_once_and_the_in_process_rank_takes_it_as_is(
        tmp_path: Path, seen: Seen) -> None:
    recipe = user_recipe(tmp_path)
    command = train_command(recipe, tmp_path / "runs", "--nproc", "1")
    expected = recipes.load(recipe, overrides(tmp_path / "runs"))
    seen.toml_reads.clear()
    assert expected.data.root == 'it\'s a "quoted" \\ root' and expected.train.steps == 3

    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert seen.toml_reads == [recipe]
    ((made, name, plan),) = seen.plans
    assert made == expected and name == "my_recipe.toml" and seen.ran == [plan]
    assert plan.synthetic and plan.run_dir == expected.run_dir()
    assert not (plan.run_dir / rundir.RANK_RECIPE).exists()  # nothing handed through a file
    # Each export's iter_N.json record, as before: the user's file name, the resolved recipe.
    sidecar = plan.record.sidecar({"torch": "2.x"})
    assert list(sidecar.items()) == [
        ("recipe_name", "my_recipe.toml"), ("recipe", recipes.dump_toml(expected)),
        ("versions", {"torch": "2.x"}), ("ema_s", expected.train.ema_s), ("flavor", "tiny")]


def test_launched_ranks_get_the_commands_resolved_recipe_even_if_the_file_changes(
        tmp_path: Path, seen: Seen, monkeypatch: pytest.MonkeyPatch) -> None:
    from ctrlpost.engine import rank

    recipe = user_recipe(tmp_path)
    command = train_command(recipe, tmp_path / "runs", "--nproc", "2")
    expected = recipes.load(recipe, overrides(tmp_path / "runs"))
    seen.toml_reads.clear()

    def elastic_launch(config: Any, entrypoint: str) -> Any:
        def start(*args: str) -> None:  # what each rank runs, in this process
            seen.rank_args.append(args)
            recipe.write_text('[job]\nname = "edited after the launch"\n')
            rank.main(list(args[3:]))
        return start

    monkeypatch.setattr("torch.distributed.launcher.api.elastic_launch", elastic_launch)
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert seen.toml_reads == [recipe]  # the ranks read the launcher's file, not the user's
    (cli, name, cli_plan), (ranks, rank_name, rank_plan) = seen.plans
    assert ranks == cli == expected and rank_name == name == "my_recipe.toml"
    assert seen.ran == [rank_plan] and rank_plan.synthetic
    assert rank_plan.record == cli_plan.record  # recipe.toml and each export's sidecar
    handed = cli_plan.run_dir / rundir.RANK_RECIPE
    (args,) = seen.rank_args
    assert list(args) == ["-u", "-m", "ctrlpost.engine.rank", str(handed),
                          "--recipe-name", "my_recipe.toml", "--synthetic"]
    assert rank.read_recipe(handed) == expected
    assert sorted(p.name for p in cli_plan.run_dir.glob(".*")) == [".rank_recipe.json",
                                                                   ".train.lock"]


def test_a_rank_recipe_file_round_trips_exact_values(tmp_path: Path) -> None:
    from ctrlpost.engine import rank

    recipe = recipes.load(TINY, ["optim.lr=4.9375e-05", "optim.eps=1e-300",
                                 "control.0.params.extra=[0.1, {deep = 'x\"y'}]",
                                 "job.seed=9223372036854775807"])
    written = rank.write_recipe(tmp_path / "run", recipe.model_dump_json())
    assert rank.read_recipe(written) == recipe
    assert [p.name for p in (tmp_path / "run").iterdir()] == [rundir.RANK_RECIPE]


def test_every_start_keeps_its_recipe(tmp_path: Path) -> None:
    """A resume with other values (``--set train.steps=60``) does not erase the recipe the
    run started with: each different start's recipe is kept under recipes/."""
    from ctrlpost.engine.worker import write_run_files

    write_run_files(tmp_path, "[train]\nsteps = 40\n")
    write_run_files(tmp_path, "[train]\nsteps = 40\n")  # the same recipe again: nothing new
    write_run_files(tmp_path, "[train]\nsteps = 60\n")
    assert (tmp_path / "recipe.toml").read_text() == "[train]\nsteps = 60\n"
    kept = sorted((tmp_path / "recipes").iterdir())
    assert [p.name for p in kept] == ["start_001.toml", "start_002.toml"]
    assert kept[0].read_text() == "[train]\nsteps = 40\n"
