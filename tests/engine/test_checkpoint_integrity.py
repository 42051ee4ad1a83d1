"""What a crash, a damaged file or a diverged run leaves behind, and how resume deals with it.

The first tests drive checkpoint.py on a two-layer module in a one-rank gloo group (a second
or so); the others make the states a fault leaves in real tiny runs and resume from them: a
kill while exporting (real, with a SIGKILL inside the export; and the committed-but-unexported
state earlier versions left), a truncated shard in the latest checkpoint, a damaged only
checkpoint, and a learning rate that turns the weights to inf mid-run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from ctrlpost.engine import checkpoint
from ctrlpost.engine.checkpoint import TrainingState
from ctrlpost.engine.ema import PowerEMA
from ctrlpost.errors import LaunchError

from .conftest import TINY, Workspace, losses, run_dir

# --- checkpoint.py on a tiny module ---------------------------------------------------------


@pytest.fixture(scope="module")
def one_rank() -> Iterator[None]:
    """A one-process gloo group, as `ctrlpost train --nproc 1` has."""
    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


class Parts:
    """A control module, its optimizer and EMA, trained a step at a time."""

    def __init__(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.control = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
        self.optimizer = torch.optim.AdamW(self.control.parameters(), lr=1e-2)
        self.ema = PowerEMA(self.control.named_parameters(), s=0.1)
        self.step = 0

    def train(self) -> None:
        self.control(torch.ones(3, 4)).square().sum().backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.ema.update(self.step)
        self.step += 1

    def save(self, root: Path, *, export: bool = True) -> Path:
        return checkpoint.save(root, control=self.control, optimizer=self.optimizer, ema=self.ema,
                               trainer=TrainingState(step=self.step), meta={"recipe": "t"},
                               sidecar={"recipe_name": "t"} if export else None)

    def restore(self, root: Path, resume: str = "auto", *,
                sidecar: dict[str, str] | None = None) -> checkpoint.Restored:
        return checkpoint.restore(root, resume, control=self.control, optimizer=self.optimizer,
                                  ema=self.ema, sidecar=sidecar)

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.control.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def halve(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def test_a_save_commits_its_exports_with_it(one_rank: None, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "checkpoints"
    parts = Parts(0)
    parts.train()
    committed = parts.save(root)
    names = [p.name for p in checkpoint.export_paths(root, 1)]
    assert json.loads((committed / checkpoint.META).read_text())["exports"] == names
    assert all((root / name).is_file() for name in names)

    # Killed while writing the EMA export of step 2: what save_checkpoint leaves mid-write.
    class Killed(BaseException):
        pass

    real = checkpoint.save_checkpoint

    def dies_on_ema(state: dict[str, torch.Tensor], path: Path) -> Path:
        if path.name.endswith("_ema_model.pt"):
            path.with_name(f".{path.name}.4242.tmp").write_bytes(b"half a file")
            raise Killed
        return real(state, path)

    monkeypatch.setattr(checkpoint, "save_checkpoint", dies_on_ema)
    parts.train()
    with pytest.raises(Killed):
        parts.save(root)
    assert [s for s, _ in checkpoint.complete_checkpoints(root)] == [1]  # step 2 never commits
    left = {".step_000000002.tmp", ".iter_000000002_ema_model.pt.4242.tmp",
            "iter_000000002_reg_model.pt"}
    assert left <= {p.name for p in root.iterdir()}
    (tmp_path / ".recipe.toml.tmp").write_text("half")
    removed = checkpoint.remove_leftovers(tmp_path, root)
    assert {p.name for p in removed} == {*left, ".recipe.toml.tmp"}
    assert sorted(p.name for p in root.iterdir()) == sorted([*names, "step_000000001"])


def test_find_damage_names_the_file(one_rank: None, tmp_path: Path) -> None:
    parts = Parts(0)
    parts.train()
    intact = parts.save(tmp_path / "intact")
    assert checkpoint.find_damage(intact) is None
    shard = "__0_0.distcp"
    size = (intact / shard).stat().st_size

    def damaged(how: str) -> str | None:
        copy = tmp_path / how / intact.name
        shutil.copytree(intact, copy)
        if how == "truncated":
            halve(copy / shard)
        elif how == "missing":
            (copy / shard).unlink()
        elif how == "metadata":
            (copy / ".metadata").write_bytes(b"not a pickle")
        else:
            (copy / checkpoint.META).write_text("{")
        return checkpoint.find_damage(copy)

    assert damaged("truncated") == f"truncated shard {shard}: {size // 2} of {size} bytes"
    assert damaged("missing") == f"missing shard {shard}"
    assert damaged("metadata") == "unreadable .metadata: UnpicklingError"
    assert damaged("meta") == "unreadable meta.json: JSONDecodeError"


def test_a_damaged_latest_checkpoint_is_kept_aside_and_the_one_before_resumed(
        one_rank: None, tmp_path: Path) -> None:
    parts = Parts(0)
    parts.train()
    first = parts.save(tmp_path)
    expected, averages = parts.weights(), {k: v.clone() for k, v in parts.ema.averages.items()}
    parts.train()
    latest = parts.save(tmp_path)
    halve(latest / "__0_0.distcp")

    fresh = Parts(1)
    restored = fresh.restore(tmp_path)
    assert restored.path == first and restored.state.step == 1
    size = (first / "__0_0.distcp").stat().st_size
    assert restored.notes == (
        f"checkpoint {latest} is damaged (truncated shard __0_0.distcp: {size // 2} of {size} "
        f"bytes); resuming from {first} (kept the damaged one as step_000000002.damaged)",)
    assert_same(fresh.weights(), expected)
    assert_same(fresh.ema.averages, averages)
    # Renamed, not deleted, so that redoing step 2 cannot overwrite it.
    assert (tmp_path / "step_000000002.damaged" / "__0_0.distcp").is_file()
    assert [s for s, _ in checkpoint.complete_checkpoints(tmp_path)] == [1]


def test_weights_that_are_not_finite_count_as_damage(one_rank: None, tmp_path: Path) -> None:
    parts = Parts(0)
    parts.train()
    first = parts.save(tmp_path)
    parts.train()
    with torch.no_grad():
        next(parts.control.parameters()).fill_(float("nan"))
    latest = parts.save(tmp_path, export=False)
    restored = Parts(1).restore(tmp_path)
    assert restored.path == first
    assert restored.notes[0].startswith(f"checkpoint {latest} is damaged (non-finite weights); ")


def test_a_damaged_only_checkpoint_stops_the_run_and_stays_where_it_is(one_rank: None,
                                                                      tmp_path: Path) -> None:
    parts = Parts(0)
    parts.train()
    only = parts.save(tmp_path)
    (only / "__0_0.distcp").unlink()
    with pytest.raises(LaunchError) as caught:
        Parts(1).restore(tmp_path)
    assert str(caught.value) == (f"checkpoint {only} is damaged (missing shard __0_0.distcp); "
                                 "no complete checkpoint to resume from")
    with pytest.raises(LaunchError, match=r"is damaged \(missing shard __0_0.distcp\)$"):
        Parts(1).restore(tmp_path, str(only))  # asked for by path: no fallback either
    assert only.is_dir() and not only.with_name(only.name + checkpoint.DAMAGED).exists()
    assert Parts(1).restore(tmp_path, "never").path is None


def test_resume_exports_what_its_checkpoint_lacks(one_rank: None, tmp_path: Path) -> None:
    parts = Parts(0)
    parts.train()
    committed = parts.save(tmp_path)
    _, ema, sidecar = checkpoint.export_paths(tmp_path, 1)
    saved = torch.load(ema)
    ema.unlink()
    sidecar.unlink()
    assert Parts(1).restore(tmp_path).notes == ()  # exports off: nothing written
    assert not ema.exists()
    restored = Parts(1).restore(tmp_path, sidecar={"recipe_name": "t"})
    assert restored.notes == (f"exported step 1 again from {committed} (files were missing)",)
    assert_same(torch.load(ema), saved)
    assert json.loads(sidecar.read_text())["iteration"] == 1
    assert Parts(1).restore(tmp_path, sidecar={"recipe_name": "t"}).notes == ()


def test_all_finite(one_rank: None) -> None:
    cpu = torch.device("cpu")
    finite = [torch.ones(3), torch.zeros(0), torch.full((2,), 1e38, dtype=torch.bfloat16)]
    assert checkpoint.all_finite(finite, device=cpu)
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert not checkpoint.all_finite([*finite, torch.tensor([0.0, bad])], device=cpu)


# --- real tiny runs ------------------------------------------------------------------------

SHORT = ["--set", "train.steps=4", "--set", "checkpoint.every_steps=2",
         "--set", "checkpoint.keep_last=5", "--set", "logging.every_steps=1",
         "--set", "validation.every_steps=0"]
ONE_RANK = ["--nproc", "1", "--set", "train.grad_accum_steps=2"]  # the global batch of 2 ranks


@pytest.fixture(scope="module")
def reference(workspace: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run that the interrupted ones must reproduce."""
    output = tmp_path_factory.mktemp("reference")
    workspace.train(output, *SHORT, *ONE_RANK)
    return output


def checkpoints_of(output: Path) -> Path:
    return run_dir(output) / "checkpoints"


def copy_checkpoints(source: Path, output: Path, *names: str) -> Path:
    target = checkpoints_of(output)
    target.mkdir(parents=True)
    for name in names:
        copy = shutil.copytree if (checkpoints_of(source) / name).is_dir() else shutil.copy2
        copy(checkpoints_of(source) / name, target / name)
    return target


def assert_same_exports(output: Path, reference: Path, step: int) -> None:
    for path in checkpoint.export_paths(checkpoints_of(reference), step)[:2]:
        assert_same(torch.load(checkpoints_of(output) / path.name), torch.load(path))


def train_patched(workspace: Workspace, output: Path, patch: str,
                  *args: str) -> subprocess.CompletedProcess[str]:
    """`ctrlpost train` on one in-process rank after running ``patch`` (Python) in it."""
    code = f"{patch}\nimport sys\nfrom ctrlpost.cli import main\nsys.argv[0] = 'ctrlpost'\nmain()"
    command = [sys.executable, "-c", code, "train", str(TINY), *workspace.overrides(output),
               *args]
    return subprocess.run(command, capture_output=True, text=True, env=workspace.env(),
                          timeout=600)


KILLED_WHILE_EXPORTING_STEP_4 = """
import os, signal
from ctrlpost.engine import checkpoint
real = checkpoint.save_checkpoint
def save_checkpoint(state, path):
    if path.name == "iter_000000004_ema_model.pt":
        path.with_name(f".{path.name}.{os.getpid()}.tmp").write_bytes(b"half an export")
        os.kill(os.getpid(), signal.SIGKILL)
    return real(state, path)
checkpoint.save_checkpoint = save_checkpoint
"""


def test_kill_9_while_exporting_then_resume_gives_the_uninterrupted_run(
        workspace: Workspace, reference: Path, tmp_path: Path) -> None:
    killed = train_patched(workspace, tmp_path, KILLED_WHILE_EXPORTING_STEP_4, *SHORT, *ONE_RANK)
    assert killed.returncode == -9, killed.stderr
    checkpoints = checkpoints_of(tmp_path)
    left = {p.name for p in checkpoints.iterdir()}
    assert "step_000000004" not in left  # the step commits only with its exports
    assert {".step_000000004.tmp", "iter_000000004_reg_model.pt"} <= left
    assert any(name.startswith(".iter_000000004_ema_model.pt.") for name in left)

    workspace.train(tmp_path, *SHORT, *ONE_RANK)
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted(
        p.name for p in checkpoints_of(reference).iterdir())  # no temp file, nothing missing
    assert_same_exports(tmp_path, reference, 4)
    assert losses(tmp_path) == losses(reference)


def test_a_committed_step_without_its_exports_is_exported_on_resume(
        workspace: Workspace, reference: Path, tmp_path: Path) -> None:
    """The state a kill during the export left before exports were part of the commit."""
    checkpoints = copy_checkpoints(reference, tmp_path, "step_000000002",
                                   "iter_000000002_reg_model.pt")
    stray = checkpoints / ".iter_000000002_ema_model.pt.4242.tmp"
    stray.write_bytes(b"half an export")
    result = workspace.train(tmp_path, *SHORT, *ONE_RANK)
    assert f"exported step 2 again from {checkpoints / 'step_000000002'}" in result.stdout
    assert not stray.exists()
    for step in (2, 4):
        assert all(path.is_file() for path in checkpoint.export_paths(checkpoints, step))
        assert_same_exports(tmp_path, reference, step)
    assert losses(tmp_path) == {s: v for s, v in losses(reference).items() if s > 2}


def test_a_truncated_shard_in_the_latest_checkpoint_resumes_from_the_one_before(
        workspace: Workspace, reference: Path, tmp_path: Path) -> None:
    """On two ranks, so both must take rank 0's decision; one line says what happened."""
    checkpoints = copy_checkpoints(reference, tmp_path, "step_000000002", "step_000000004")
    damaged = checkpoints / "step_000000004"
    size = (damaged / "__0_0.distcp").stat().st_size
    halve(damaged / "__0_0.distcp")
    result = workspace.train(tmp_path, *SHORT, "--nproc", "2")
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    said = [line for line in output.splitlines() if "is damaged" in line]
    assert len(said) == 1
    assert said[0].endswith(
        f"checkpoint {damaged} is damaged (truncated shard __0_0.distcp: {size // 2} of {size} "
        f"bytes); resuming from {checkpoints / 'step_000000002'} (kept the damaged one as "
        "step_000000004.damaged)")
    assert (checkpoints / "step_000000004.damaged" / "__0_0.distcp").stat().st_size == size // 2
    resumed, uninterrupted = losses(tmp_path), losses(reference)
    assert sorted(resumed) == [3, 4]
    assert all(abs(resumed[s] - uninterrupted[s]) <= 1e-5 for s in (3, 4)), resumed


def test_a_damaged_only_checkpoint_stops_with_one_line(workspace: Workspace, reference: Path,
                                                       tmp_path: Path) -> None:
    checkpoints = copy_checkpoints(reference, tmp_path, "step_000000002")
    (checkpoints / "step_000000002" / ".metadata").write_bytes(b"")
    result = workspace.train(tmp_path, *SHORT, *ONE_RANK, check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        f"error: checkpoint {checkpoints / 'step_000000002'} is damaged (unreadable .metadata: "
        "EOFError); no complete checkpoint to resume from")
    assert "Traceback" not in result.stdout + result.stderr
    assert (checkpoints / "step_000000002").is_dir()


INFINITE_LR_FROM_STEP_3 = """
from ctrlpost.engine import trainer
real = trainer.lr_factor
trainer.lr_factor = lambda step, **kw: real(step, **kw) if step < 2 else float("inf")
"""


def test_weights_that_become_non_finite_end_the_run_naming_the_step(
        workspace: Workspace, tmp_path: Path) -> None:
    """An infinite learning rate (which the recipe would refuse; patched in past it) turns the
    weights to inf at step 3: the run stops there, and what it exported is finite."""
    result = train_patched(workspace, tmp_path, INFINITE_LR_FROM_STEP_3, *SHORT, *ONE_RANK)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[0].startswith(
        "error: weights became non-finite at step 3 (lr inf,")
    checkpoints = checkpoints_of(tmp_path)
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted(
        [p.name for p in checkpoint.export_paths(checkpoints, 2)] + ["step_000000002"])
    for path in checkpoint.export_paths(checkpoints, 2)[:2]:
        assert all(torch.isfinite(t).all() for t in torch.load(path).values())
