"""The synthetic source: deterministic per seed, right size, and the CLI's default path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ctrlpost.cli import app
from ctrlpost.data.fetch import runner as fetch
from ctrlpost.data.fetch import synthetic
from ctrlpost.errors import DataError
from ctrlpost.recipe import DataSection, load


def section(root: Path, **synthetic_options: object) -> DataSection:
    return DataSection.model_validate({
        "root": str(root), "source": "synthetic", "num_frames": 17,
        "synthetic": {"num_clips": 3, "width": 64, "height": 48, "frames": 20, "fps": 12.0,
                      **synthetic_options}})


def test_same_seed_same_bytes_other_seed_other_clips(tmp_path: Path) -> None:
    runs = {name: fetch.fetch_data(section(tmp_path / name), seed=seed)
            for name, seed in (("a", 7), ("b", 7), ("c", 8))}
    hashes = {name: [r.sha256 for r in result.records] for name, result in runs.items()}
    assert hashes["a"] == hashes["b"]
    assert len(set(hashes["a"])) == 3                         # clips differ from each other
    assert not set(hashes["a"]) & set(hashes["c"])
    captions = [(tmp_path / "a/metas" / f"synthetic_0000{i}.txt").read_text() for i in range(3)]
    assert captions == [synthetic.draw_scene(7, i).caption() for i in range(3)]


def test_clip_size_frames_and_fps(tmp_path: Path) -> None:
    import cv2

    result = fetch.fetch_data(section(tmp_path), seed=0, num_videos=2)
    assert [r.id for r in result.records] == ["synthetic_00000", "synthetic_00001"]
    for record in result.records:
        cap = cv2.VideoCapture(str(tmp_path / "videos" / f"{record.id}.mp4"))
        frames = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            assert frame.shape == (48, 64, 3)
            frames += 1
        assert (frames, cap.get(cv2.CAP_PROP_FPS)) == (20, 12.0)
        assert (record.width, record.height, record.frames, record.fps) == (64, 48, 20, 12.0)


def test_caption_describes_the_scene() -> None:
    scene = synthetic.Scene(shape="circle", colour="red", motion="left", texture="striped",
                            background="blue", pan="up")
    assert scene.caption() == ("a red circle moves left over a blue striped background while "
                               "the camera pans up")
    still = synthetic.Scene("square", "green", "down", "dotted", "white", None)
    assert still.caption().endswith("while the camera is still")


def test_frames_below_num_frames_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"\[data.synthetic\].frames \(10\) is below"):
        fetch.fetch_data(section(tmp_path, frames=10), seed=0)
    assert not tmp_path.joinpath("videos").exists()


def test_cli_on_the_shipped_tiny_recipe(repo: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    args = ["fetch-data", str(repo / "recipes/edge_tiny.toml"), "--set", f'data.root="{root}"',
            "--num-videos", "3", "--workers", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "ok" in result.output and f"manifest: {root / 'manifest.jsonl'}" in result.output
    shipped = load(repo / "recipes/edge_tiny.toml").data.synthetic
    manifest = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    assert [(m["id"], m["status"], m["width"], m["height"], m["frames"]) for m in manifest] == [
        (f"synthetic_0000{i}", "ok", shipped.width, shipped.height, shipped.frames)
        for i in range(3)]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "skipped" in again.output
    assert {json.loads(line)["status"] for line in
            (root / "manifest.jsonl").read_text().splitlines()} == {"skipped"}


def test_cli_rejects_an_unknown_source(repo: Path) -> None:
    result = CliRunner().invoke(app, ["fetch-data", str(repo / "recipes/edge_tiny.toml"),
                                      "--source", "vimeo"])
    assert result.exit_code == 2
    assert "data.source: Input should be 'hdvila', 'local' or 'synthetic' (got 'vimeo')" in \
        " ".join(result.output.split())


def test_scene_is_a_pure_function_of_seed_and_index() -> None:
    assert synthetic.draw_scene(0, 5) == synthetic.draw_scene(0, 5)
    scenes = {synthetic.draw_scene(0, i) for i in range(40)}
    assert len(scenes) > 30




def test_plain_backgrounds_leave_only_the_shape_edges(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    result = fetch.fetch_data(section(tmp_path, textures=["plain"], width=96, height=64),
                              seed=3, num_videos=2)
    assert all(r.status == "ok" for r in result.records)
    for index in range(2):
        scene = synthetic.draw_scene(3, index, ["plain"])
        assert scene.texture == "plain" and "plain background" in scene.caption()
        plain = next(synthetic.render(scene, np.random.default_rng(0), width=96, height=64,
                                      frames=1))
        textured = next(synthetic.render(
            synthetic.draw_scene(3, index, ["striped"]), np.random.default_rng(0), width=96,
            height=64, frames=1))
        # The lowest thresholds of the edge presets: the shape's outline only, against a
        # background whose own pattern fills the frame with edges.
        edges = [int((cv2.Canny(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), 50, 100) > 0).sum())
                 for f in (plain, textured)]
        outline = 2 * 3.2 * (min(96, 64) // 5) * 2  # about two perimeters of the drawn shape
        assert 0 < edges[0] < outline < edges[1], edges


def test_the_default_textures_draw_the_same_scenes_as_before_plain_existed() -> None:
    # Drawn by the source before `textures` existed: the embedded default's clips are unchanged.
    assert [synthetic.draw_scene(0, i).texture for i in range(8)] == [
        "striped", "dotted", "checkered", "striped", "checkered", "checkered", "dotted", "dotted"]
    with pytest.raises(ValueError, match="textures"):
        section(Path("x"), textures=["marble"])
