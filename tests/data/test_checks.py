"""`ctrlpost verify`'s data stage: every planted defect reported by file, in one run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from ctrlpost import preflight
from ctrlpost.cli import app

from .conftest import embedding, write_clip, write_pickle

DIM = 64  # the tiny flavor's T5 width
FRAMES = 12  # data.num_frames of the test recipe


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def plant(root: Path, marker: Path) -> None:
    """Two good clips and one clip per defect (names say which); plus two orphans."""
    names = ["good1", "good2", "zero", "truncated", "short", "nocaption", "noembedding",
             "wrongshape", "nan", "evil", "damaged"]
    for i, name in enumerate(names):
        write_clip(root / "videos" / f"{name}.mp4", 6 if name == "short" else 16,
                   width=128, height=96 if name == "good2" else 72)
        if name != "nocaption":
            (root / "metas").mkdir(parents=True, exist_ok=True)
            (root / "metas" / f"{name}.txt").write_text(f"caption {i}")
        if name != "noembedding":
            write_pickle(root / "t5_xxl" / f"{name}.pickle", [embedding(4 + i, DIM, seed=i)])
    (root / "videos" / "zero.mp4").write_bytes(b"")
    data = (root / "videos" / "truncated.mp4").read_bytes()
    (root / "videos" / "truncated.mp4").write_bytes(data[: len(data) // 2])
    damaged = bytearray((root / "videos" / "damaged.mp4").read_bytes())
    end = damaged.find(b"moov") - 4  # zero the tail of the frame data, keep the index
    damaged[end * 2 // 3:end] = bytes(end - end * 2 // 3)
    (root / "videos" / "damaged.mp4").write_bytes(bytes(damaged))
    write_pickle(root / "t5_xxl" / "wrongshape.pickle", [embedding(4, 32)])
    write_pickle(root / "t5_xxl" / "nan.pickle", [np.full((4, DIM), np.nan, np.float16)])
    write_pickle(root / "t5_xxl" / "evil.pickle", [_RunsCode(marker)])
    write_pickle(root / "t5_xxl" / "ghost.pickle", [embedding(3, DIM)])
    (root / "metas" / "ghost.txt").write_text("no video")


def write_recipe(path: Path, root: Path) -> Path:
    path.write_text(
        f'[job]\nname = "x"\n[data]\nroot = {json.dumps(str(root))}\nnum_frames = {FRAMES}\n'
        'resolution = "128"\nnum_workers = 0\n[model]\nflavor = "tiny"\n'
        '[[control]]\nmodality = "edge"\n[train]\nsteps = 1\n')
    return path


def test_every_planted_defect_is_reported_by_file(tmp_path: Path) -> None:
    root, marker = tmp_path / "data", tmp_path / "pwned"
    plant(root, marker)
    recipe = write_recipe(tmp_path / "r.toml", root)
    preview = tmp_path / "sheet.png"
    result = CliRunner().invoke(app, ["verify", str(recipe), "--json", "--preview", str(preview)])
    assert result.exit_code == 2, result.output
    report = json.loads(result.stdout)
    problems = {p["path"]: p["message"] for p in report["problems"] if p["stage"] == "data"}
    assert set(problems) == {
        "videos/zero.mp4", "videos/truncated.mp4", "videos/short.mp4", "videos/damaged.mp4",
        "metas/nocaption.txt", "t5_xxl/noembedding.pickle", "t5_xxl/wrongshape.pickle",
        "t5_xxl/nan.pickle", "t5_xxl/evil.pickle",
    }
    assert problems["videos/zero.mp4"] == "empty file (0 bytes)"
    assert "cannot open video" in problems["videos/truncated.mp4"]
    assert problems["videos/short.mp4"] == f"6 frames, fewer than data.num_frames={FRAMES}"
    assert "last frame (15) does not decode" in problems["videos/damaged.mp4"]
    assert problems["metas/nocaption.txt"].startswith("missing caption")
    assert f"ctrlpost embed {recipe}" in problems["t5_xxl/noembedding.pickle"]
    assert "width 32, the model expects 64" in problems["t5_xxl/wrongshape.pickle"]
    assert "NaN or Inf" in problems["t5_xxl/nan.pickle"]
    assert "refused global" in problems["t5_xxl/evil.pickle"]
    assert not marker.exists()

    (data_stage,) = [s for s in report["stages"] if s["name"] == "data"]
    summary = data_stage["summary"]
    assert (summary["clips"], summary["ok"]) == (11, 2)
    # zero.mp4 and truncated.mp4 do not open: no size for them
    assert summary["frames"] == [6, 16] and summary["resolutions"] == {"128x72": 8, "128x96": 1}
    assert summary["buckets"] == {"16:9": 8, "4:3": 1}
    assert summary["low_resolution"] == 9  # every clip is below its 128-row bucket
    assert summary["orphan_files"] == ["t5_xxl/ghost.pickle", "metas/ghost.txt"]

    sheet = cv2.imread(str(preview))
    assert sheet is not None and sheet.shape[1] == 4 * 320 + 3 * 4
    assert "preview of good1, good2, nocaption" in result.output


def test_clean_dataset_passes_and_missing_root_names_fetch_data(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for name in ("a", "b"):
        write_clip(root / "videos" / f"{name}.mp4", 16, 224, 128)
        (root / "metas").mkdir(exist_ok=True)
        (root / "metas" / f"{name}.txt").write_text("words")
        write_pickle(root / "t5_xxl" / f"{name}.pickle", [embedding(3, DIM)])
    recipe = write_recipe(tmp_path / "r.toml", root)
    report = preflight.run(recipe, stages=("recipe", "plugins", "data"))
    assert report.ok and report.stages[-1].summary["ok"] == 2
    result = CliRunner().invoke(app, ["verify", str(recipe), "--json"])
    (data_stage,) = [s for s in json.loads(result.stdout)["stages"] if s["name"] == "data"]
    assert data_stage["status"] == "ok"
    missing = CliRunner().invoke(app, ["verify", str(recipe), "--json", "--set",
                                       f"data.root={json.dumps(str(tmp_path / 'nope'))}"])
    assert missing.exit_code == 2
    (problem,) = [p for p in json.loads(missing.stdout)["problems"] if p["stage"] == "data"]
    assert problem["path"] == str(tmp_path / "nope") and "fetch-data" in problem["message"]


@pytest.mark.parametrize("bad", ["float32"])
def test_float32_embedding_is_flagged(tmp_path: Path, bad: str) -> None:
    from ctrlpost.data.checks import embedding_problem

    path = write_pickle(tmp_path / "e.pickle", [np.zeros((3, DIM), dtype=bad)])
    assert "float16" in (embedding_problem(path, DIM) or "")
