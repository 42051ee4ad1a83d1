"""`ctrlpost annotate`'s loop (ctrlpost.annotate) with a stand-in plugin: which clips it writes,
skips and reports, the checks after writing, leftovers, the lock, and the input errors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from ctrlpost import annotate as annotation
from ctrlpost.annotate import AnnotateFailed, AnnotationTarget, annotate_dataset
from ctrlpost.data.layout import DatasetLayout
from ctrlpost.errors import CtrlpostError, DataError, PluginError, WeightsError
from ctrlpost.files import exclusive_lock, temp_path
from ctrlpost.modalities import Annotator, ClipInfo, ClipWindow, HintFile
from ctrlpost.recipe import ControlSection

CLIPS = {"a": 5, "b": 6, "c": 4}  # frames per clip
MODEL = "acme/fake-model"


def write_clip(path: Path, frames: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (32, 24))
    rng = np.random.default_rng(seed)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    writer.release()


def read_npy(path: Path, window: ClipWindow) -> np.ndarray:
    return np.load(path)[window.start:window.start + window.num_frames]


def check_npy(path: Path, clip: ClipInfo) -> str | None:
    shape = np.load(path).shape
    return None if shape == (clip.frame_count, clip.height, clip.width) else f"shape {shape}"


class Plugin:
    """A stand-in annotator: the mean grey of each frame, saved atomically as ``.npy``."""

    def __init__(self) -> None:
        self.loads: list[tuple[str, str]] = []
        self.calls: list[str] = []
        self.fail: dict[str, Exception] = {}
        self.short: set[str] = set()

    def load(self, folders: Mapping[str, Path], device: str, params: Any) -> str:
        self.loads.append((str(folders[MODEL]), device))
        return "model"

    def annotate(self, loaded: str, frames_T_H_W_C: np.ndarray, fps: float, path: Path,
                 batch_size: int) -> None:
        assert loaded == "model" and fps == 12.0 and batch_size == 2
        name = path.stem
        self.calls.append(name)
        if name in self.fail:
            raise self.fail[name]
        grey_T_H_W = frames_T_H_W_C.mean(axis=-1)
        if name in self.short:
            grey_T_H_W = grey_T_H_W[:-1]
        temp = temp_path(path)
        with open(temp, "wb") as handle:
            np.save(handle, grey_T_H_W)
        os.replace(temp, path)


@pytest.fixture
def plugin() -> Plugin:
    return Plugin()


@pytest.fixture
def target(plugin: Plugin) -> AnnotationTarget:
    hint_file = HintFile(folder="grey", suffix=".npy", read=read_npy, check=check_npy,
                         annotator=Annotator(models=(MODEL,), load=plugin.load,
                                             annotate=plugin.annotate))
    assert hint_file.annotator is not None
    return AnnotationTarget("grey", hint_file, hint_file.annotator, None)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for seed, (name, frames) in enumerate(CLIPS.items()):
        write_clip(DatasetLayout(root).video(name), frames, seed)
    (tmp_path / "w" / MODEL).mkdir(parents=True)
    (tmp_path / "w" / MODEL / "weights.bin").write_bytes(b"w")
    return root


def run(root: Path, target: AnnotationTarget, **kwargs: Any) -> annotation.AnnotateResult:
    return annotate_dataset(root, target, weights_dir=root.parent / "w", device="cpu",
                            batch_size=2, recipe="r.toml", **kwargs)


class Recorder:
    def __init__(self) -> None:
        self.total: int | None = None
        self.done: list[tuple[str, str]] = []

    def start(self, total: int) -> None:
        self.total = total

    def clip_done(self, outcome: annotation.ClipOutcome) -> None:
        self.done.append((outcome.name, outcome.status))


def test_writes_every_clip_then_a_rerun_skips_without_loading(
        dataset: Path, target: AnnotationTarget, plugin: Plugin) -> None:
    progress = Recorder()
    result = run(dataset, target, progress=progress)
    assert [(o.name, o.status, o.frames) for o in result.outcomes] == [
        ("a", "written", 5), ("b", "written", 6), ("c", "written", 4)]
    assert progress.total == 3 and sorted(progress.done) == [
        ("a", "written"), ("b", "written"), ("c", "written")]
    assert plugin.loads == [(str(dataset.parent / "w" / MODEL), "cpu")]
    assert result.frames_written == 15 and result.folder == dataset / "grey"
    assert sorted(p.name for p in (dataset / "grey").iterdir()) == ["a.npy", "b.npy", "c.npy"]
    result.raise_for_failures()
    stats = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in
             (dataset / "grey").iterdir()}
    again = run(dataset, target)
    assert [o.status for o in again.outcomes] == ["skipped"] * 3
    assert len(plugin.loads) == 1 and len(plugin.calls) == 3  # no model loaded, nothing called
    assert stats == {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in
                     (dataset / "grey").iterdir()}


def test_a_file_that_does_not_match_its_clip_is_made_again(
        dataset: Path, target: AnnotationTarget, plugin: Plugin) -> None:
    run(dataset, target)
    np.save(dataset / "grey" / "b.npy", np.zeros((2, 24, 32)))  # too short for the clip
    result = run(dataset, target)
    assert [o.status for o in result.outcomes] == ["skipped", "written", "skipped"]
    assert plugin.calls[-1] == "b" and np.load(dataset / "grey" / "b.npy").shape == (6, 24, 32)


def test_failed_clips_are_named_and_the_others_written(
        dataset: Path, target: AnnotationTarget, plugin: Plugin) -> None:
    plugin.fail["a"] = RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")
    plugin.short.add("c")  # writes a file its own check refuses
    (dataset / "videos" / "d.mp4").write_bytes(b"not a video")
    result = run(dataset, target)
    outcomes = {o.name: (o.status, o.detail) for o in result.outcomes}
    assert outcomes["a"] == ("failed", "RuntimeError: CUDA out of memory.")
    assert outcomes["b"] == ("written", "")
    assert outcomes["c"][0] == "failed" and "fails its check: shape (3, 24, 32)" in outcomes["c"][1]
    assert outcomes["d"][0] == "failed" and "cannot open" in outcomes["d"][1]
    assert sorted(p.name for p in (dataset / "grey").iterdir()) == ["b.npy"]  # c removed
    with pytest.raises(AnnotateFailed) as info:
        result.raise_for_failures("ctrlpost annotate r.toml")
    assert info.value.exit_code == 1
    assert info.value.message.startswith("3 of 4 clips got no grey file: a (RuntimeError")
    assert "c (the written file fails its check" in info.value.message
    assert "rerun `ctrlpost annotate r.toml`" in (info.value.hint or "")
    plugin.fail.clear()
    plugin.short.clear()
    again = run(dataset, target)
    assert {o.name: o.status for o in again.outcomes} == {
        "a": "written", "b": "skipped", "c": "written", "d": "failed"}


def test_a_full_disk_stops_the_run(dataset: Path, target: AnnotationTarget,
                                   plugin: Plugin) -> None:
    plugin.fail["b"] = OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space left"):
        run(dataset, target)
    assert plugin.calls == ["a", "b"]


def test_leftover_temps_are_swept_and_the_lock_is_held(
        dataset: Path, target: AnnotationTarget) -> None:
    folder = dataset / "grey"
    folder.mkdir()
    leftover = temp_path(folder / "a.npy")
    leftover.write_bytes(b"half")
    run(dataset, target)
    assert not leftover.exists()
    with exclusive_lock(DatasetLayout(dataset).lock, busy=lambda: RuntimeError("held"),
                        unwritable=lambda exc: RuntimeError("x")), \
            pytest.raises(DataError, match="another `ctrlpost fetch-data` or `annotate`"):
        run(dataset, target)


def test_input_errors_before_anything_is_written(
        dataset: Path, target: AnnotationTarget, plugin: Plugin) -> None:
    with pytest.raises(WeightsError) as info:
        annotate_dataset(dataset, target, weights_dir=dataset / "nowhere", device="cpu")
    assert str(dataset / "nowhere" / MODEL) in info.value.message
    assert info.value.hint == "run `ctrlpost fetch-weights RECIPE`"
    other = AnnotationTarget("grey", target.hint_file, target.annotator, None, in_recipe=False)
    with pytest.raises(WeightsError) as info:
        annotate_dataset(dataset, other, weights_dir=dataset / "nowhere", recipe="r.toml")
    assert info.value.hint == "run `ctrlpost fetch-weights r.toml --modality grey`"
    with pytest.raises(DataError, match="no clips") as data_info:
        run(dataset.parent / "empty", target)
    assert "ctrlpost fetch-data r.toml" in (data_info.value.hint or "")
    with pytest.raises(CtrlpostError, match="unknown device"):
        annotate_dataset(dataset, target, weights_dir=dataset.parent / "w", device="tpu")
    assert plugin.loads == [] and not (dataset / "grey").exists()


def test_models_that_do_not_load_name_the_fix(dataset: Path, target: AnnotationTarget,
                                              plugin: Plugin,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> None:
        raise OSError("Error no file named model.safetensors found in directory")

    monkeypatch.setattr(plugin, "load", broken)
    hint_file = HintFile(folder="grey", suffix=".npy", read=read_npy, check=check_npy,
                         annotator=Annotator(models=(MODEL,), load=broken,
                                             annotate=plugin.annotate))
    assert hint_file.annotator is not None
    with pytest.raises(WeightsError, match="do not load: OSError: Error no file named") as info:
        run(dataset, AnnotationTarget("grey", hint_file, hint_file.annotator, None))
    assert "fetch-weights r.toml" in (info.value.hint or "")


def test_the_target_is_the_recipes_file_modality() -> None:
    depth = [ControlSection(modality="depth")]
    found = annotation.annotation_target(depth)
    assert found.modality == "depth" and found.hint_file.folder == "depth"
    assert found.in_recipe and found.annotator is found.hint_file.annotator
    assert not annotation.annotation_target([ControlSection(modality="edge")],
                                            "depth").in_recipe
    assert "depth" in annotation.annotated_modalities()
    for modality in ("edge", "upscale"):
        with pytest.raises(PluginError, match=f"modality '{modality}' computes its hints from "
                           "the clip's frames") as info:
            annotation.annotation_target([ControlSection(modality=modality)])
        assert info.value.exit_code == 2
        assert "depth" in (info.value.hint or "")
    with pytest.raises(PluginError, match="unknown"):
        annotation.annotation_target(depth, "nosuch")
