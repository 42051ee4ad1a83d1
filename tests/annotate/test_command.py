"""`ctrlpost annotate` end to end on the embedded default's depth recipe, with the real commands
in subprocesses: `fetch-weights` makes the tiny Depth Anything, `fetch-data` the clips, then
`annotate` remakes every depth file with it; `verify` accepts them, a rerun rewrites nothing,
and a run killed with SIGKILL finishes on the next run without touching the files it had
written. Input errors are one line and exit 2."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ctrlpost.data.layout import DatasetLayout
from ctrlpost.files import TEMP_GLOB
from ctrlpost.modalities import ClipInfo
from ctrlpost_depth import check_depth

REPO = Path(__file__).resolve().parents[2]
DEPTH = REPO / "recipes" / "depth_tiny.toml"
EDGE = REPO / "recipes" / "edge_tiny.toml"
MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
CLIPS = 8


@dataclass(frozen=True)
class Workspace:
    """Tiny weights and a depth dataset made by the real commands; ``data`` is a fresh copy
    per test, without its depth files."""

    root: Path
    exe: list[str]

    def sets(self, data: Path, weights: Path | None = None) -> list[str]:
        return ["--set", f"weights.dir='{weights or self.root / 'weights'}'",
                "--set", f"data.root='{data}'"]

    def env(self) -> dict[str, str]:
        return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}

    def run(self, *args: str, recipe: Path = DEPTH, data: Path | None = None,
            weights: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.exe, args[0], str(recipe), *args[1:],
                               *self.sets(data or self.root / "data", weights)],
                              capture_output=True, text=True, env=self.env(), timeout=600)

    def fresh_data(self, tmp_path: Path) -> Path:
        data = tmp_path / "data"
        shutil.copytree(self.root / "data", data)
        shutil.rmtree(data / "depth")
        return data


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, ctrlpost_exe: list[str]) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("annotate_ws"), ctrlpost_exe)
    for command in ("fetch-weights", "fetch-data", "embed"):
        ok(ws.run(command))
    return ws


@pytest.fixture(scope="module")
def ctrlpost_exe() -> list[str]:
    import sys

    exe = shutil.which("ctrlpost", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "ctrlpost"]


def stats(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("*.mp4")}


def count(stdout: str, status: str) -> int:
    found = re.search(rf"{status}\W+(\d+)", stdout)
    assert found, stdout
    return int(found.group(1))


def one_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The run exited 2 with one ``error:`` line (and at most a ``hint:`` line), no traceback."""
    assert result.returncode == 2, f"{result.stdout}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert [line.split(":")[0] for line in lines] in (["error"], ["error", "hint"]), lines
    for needle in needles:
        assert needle in result.stderr, result.stderr
    return result.stderr


def test_fetch_weights_makes_the_tiny_depth_model(workspace: Workspace) -> None:
    folder = workspace.root / "weights" / MODEL
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json"]
    assert json.loads((folder / "config.json").read_text())["model_type"] == "depth_anything"
    made = (folder / "model.safetensors").stat().st_mtime_ns
    again = ok(workspace.run("fetch-weights", "--json"))
    assert json.loads(again.stdout)["made"] == []  # complete: kept
    assert (folder / "model.safetensors").stat().st_mtime_ns == made


def test_annotate_writes_every_clip_verify_accepts_a_rerun_skips(workspace: Workspace,
                                                                 tmp_path: Path) -> None:
    data = workspace.fresh_data(tmp_path)
    missing = workspace.run("verify", "--stages", "data", data=data)
    assert missing.returncode == 2
    assert f"missing depth file; run `ctrlpost annotate {DEPTH}`" in missing.stderr
    first = ok(workspace.run("annotate", "--device", "cpu", data=data))
    assert count(first.stdout, "written") == CLIPS and count(first.stdout, "failed") == 0
    folder = data / "depth"
    names = DatasetLayout(data).clips()
    assert sorted(p.stem for p in folder.glob("*.mp4")) == names and len(names) == CLIPS
    assert not list(folder.glob(TEMP_GLOB))
    report = json.loads(ok(workspace.run("verify", "--stages", "data", "--json",
                                         data=data)).stdout)
    assert report["ok"] and report["problems"] == []
    # the model's maps, not the synthetic ones fetch-data wrote
    synthetic = workspace.root / "data" / "depth" / f"{names[0]}.mp4"
    assert (folder / f"{names[0]}.mp4").read_bytes() != synthetic.read_bytes()
    before = stats(folder)
    again = ok(workspace.run("annotate", "--device", "cpu", data=data))
    assert count(again.stdout, "skipped") == CLIPS and count(again.stdout, "written") == 0
    assert stats(folder) == before


def test_a_killed_run_finishes_on_the_next_without_rewriting(workspace: Workspace,
                                                             tmp_path: Path) -> None:
    data = workspace.fresh_data(tmp_path)
    folder = data / "depth"
    command = [*workspace.exe, "annotate", str(DEPTH), "--device", "cpu", "--batch-size", "1",
               *workspace.sets(data)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=workspace.env())
    try:
        deadline = time.monotonic() + 300
        while not list(folder.glob("*.mp4")) and time.monotonic() < deadline:
            assert process.poll() is None, "annotate ended before it could be killed"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    before = stats(folder)
    assert 1 <= len(before) < CLIPS, before
    layout = DatasetLayout(data)
    for name in before:  # a file under its final name is complete
        clip = ClipInfo(name=name[:-4], frame_count=24, width=224, height=128, fps=24.0)
        assert check_depth(folder / name, clip) is None
    rerun = ok(workspace.run("annotate", "--device", "cpu", data=data))
    assert count(rerun.stdout, "skipped") == len(before)
    assert count(rerun.stdout, "written") == CLIPS - len(before)
    after = stats(folder)
    assert sorted(p[:-4] for p in after) == layout.clips()
    assert {name: after[name] for name in before} == before  # same inode, same mtime
    assert not list(folder.glob(TEMP_GLOB))  # the killed writer's temp file was swept
    ok(workspace.run("verify", "--stages", "data", data=data))


def test_a_modality_without_annotator_is_one_line_exit_2(workspace: Workspace,
                                                         tmp_path: Path) -> None:
    data = tmp_path / "nothing"
    one_error(workspace.run("annotate", recipe=EDGE, data=data),
              "modality 'edge' computes its hints from the clip's frames",
              "makes files for: depth")
    one_error(workspace.run("annotate", "--modality", "upscale", data=data),
              "modality 'upscale'")


def test_missing_models_name_fetch_weights(workspace: Workspace, tmp_path: Path) -> None:
    data = workspace.fresh_data(tmp_path)
    message = one_error(workspace.run("annotate", data=data, weights=tmp_path / "empty"),
                        str(tmp_path / "empty" / MODEL), f"run `ctrlpost fetch-weights {DEPTH}`")
    assert "Traceback" not in message and not (data / "depth").exists()



# -- the online depth hint (control.params.source = "online") --------------------------------

ONLINE = ["--set", 'control.0.params.source="online"', "--set", "control.0.params.batch_size=16"]


def test_the_online_hint_equals_the_annotated_files(workspace: Workspace, tmp_path: Path) -> None:
    """Same frames (the whole clip, which needs no resize into its bucket), same model, same
    batches: the hint the training process computes is the annotated file's, level for level."""
    from ctrlpost import recipe as recipes
    from ctrlpost.data.dataset import build_dataset
    from ctrlpost.engine.build import online_hints
    from ctrlpost.engine.runtime import Runtime

    cpu = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))

    data = workspace.fresh_data(tmp_path)
    ok(workspace.run("annotate", "--device", "cpu", "--batch-size", "16", data=data))
    sets = [*workspace.sets(data)[1::2], "data.num_frames=24"]  # the window is the whole clip
    from_files = recipes.load(DEPTH, sets)
    online = recipes.load(DEPTH, [*sets, *ONLINE[1::2]])
    files_set = build_dataset(from_files.data, from_files.control[0], seed=0)
    online_set = build_dataset(online.data, online.control[0], seed=0)
    hints = online_hints(online, cpu)
    assert hints is not None and online_hints(from_files, cpu) is None
    threads = torch.get_num_threads()
    # The thread count `annotate` ran with (Workspace.env): float sums then add up in the same
    # order, so a pixel at a level boundary falls on the same side.
    torch.set_num_threads(1)
    try:
        for index in range(2):
            expected = files_set.load(index, epoch=0)
            sample = online_set.load(index, epoch=0)
            assert sample["hint"].shape == (3, 0, 0, 0)  # the loader leaves it to the rank
            assert torch_equal(sample["video"], expected["video"])
            made = hints.fill(sample)["hint"]
            assert made.shape == expected["hint"].shape and made.dtype == expected["hint"].dtype
            assert torch_equal(made, expected["hint"])
    finally:
        torch.set_num_threads(threads)


def torch_equal(a: object, b: object) -> bool:
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    return bool(torch.equal(a, b))


def test_an_online_depth_job_verifies_and_trains_without_depth_files(workspace: Workspace,
                                                                    tmp_path: Path) -> None:
    data = workspace.fresh_data(tmp_path)  # no depth/ folder at all
    runs = tmp_path / "runs"
    train = [*ONLINE, "--set", f"job.output_root='{runs}'", "--set", "train.steps=2",
             "--set", "checkpoint.every_steps=2", "--set", "validation.every_steps=2",
             "--set", "validation.num_clips=1", "--set", "parallel.nproc_per_node=1",
             "--set", "logging.every_steps=1"]
    ok(workspace.run("verify", *train, data=data))
    result = ok(workspace.run("train", *train, data=data))
    run = next(runs.rglob("metrics.jsonl")).parent
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2], result.stdout
    strips = sorted(p.relative_to(run).parts[1] for p in (run / "validation").rglob("*.png"))
    assert strips == ["step_000000000", "step_000000002"], strips
    assert not (data / "depth").exists()


def test_online_verify_names_the_missing_model(workspace: Workspace, tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    shutil.copytree(workspace.root / "weights", weights)
    shutil.rmtree(weights / MODEL)
    result = workspace.run("verify", *ONLINE, "--stages", "weights", weights=weights)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "control.0.params.source" in result.stdout + result.stderr
    assert str(weights / MODEL) in (result.stdout + result.stderr).replace("\n", "")
    assert f"ctrlpost fetch-weights {DEPTH}" in result.stdout + result.stderr


def test_fetch_data_writes_no_depth_files_for_an_online_job(workspace: Workspace,
                                                            tmp_path: Path) -> None:
    data = tmp_path / "online_data"
    ok(workspace.run("fetch-data", *ONLINE, data=data))
    assert len(DatasetLayout(data).clips()) == CLIPS and not (data / "depth").exists()
    ok(workspace.run("fetch-data", data=tmp_path / "file_data"))
    assert len(list((tmp_path / "file_data" / "depth").glob("*.mp4"))) == CLIPS
