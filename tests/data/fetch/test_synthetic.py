"""The synthetic source: deterministic per seed, right size, and the CLI's default path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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


def shape_pixels(frame: np.ndarray, scene: synthetic.Scene) -> tuple[np.ndarray, ...]:
    """(rows, cols) of the pixels of ``frame`` (BGR) in the scene's shape colour."""
    colour = np.array(synthetic.COLOURS[scene.colour])
    return np.nonzero(np.abs(frame.astype(int) - colour).sum(-1) < 30)


def test_shapes_start_at_drawn_places_and_move_slowly_inside_the_frame() -> None:
    width, height, frames = 224, 128, 24
    scenes = [synthetic.draw_scene(0, index, ["plain"]) for index in range(8)]
    assert len({scene.place for scene in scenes}) == 8  # a place of its own per clip
    assert all(0.0 <= v < 1.0 for scene in scenes for v in scene.place)
    size = synthetic.shape_size(width, height)
    starts = []
    for scene in scenes:
        clip = list(synthetic.render(scene, np.random.default_rng(0), width=width, height=height,
                                     frames=frames))
        centres = []
        for frame in clip:
            rows, cols = shape_pixels(frame, scene)
            # Whole: the shape never touches the border, so its outline is always all there.
            assert rows.min() > 0 and cols.min() > 0
            assert rows.max() < height - 1 and cols.max() < width - 1
            centres.append(((cols.min() + cols.max()) / 2, (rows.min() + rows.max()) / 2))
        step = np.array(centres[-1]) - np.array(centres[0])
        travel = np.array(synthetic.DIRECTIONS[scene.motion]) * synthetic.SHAPE_SPEED * (frames - 1)
        np.testing.assert_allclose(step, travel, atol=1.0)
        starts.append(centres[0])
        expected = synthetic.path_start(scene, width=width, height=height, frames=frames)
        np.testing.assert_allclose(centres[0], expected, atol=1.0)
    spread = np.array(starts).std(axis=0)
    assert spread[0] > size and spread[1] > size / 4  # all over the frame, not at its centre
    assert synthetic.SHAPE_SPEED * 8 <= 4  # half a latent cell per tokenizer frame group


def test_plain_clips_keep_their_outline_through_the_tiny_tokenizer(tmp_path: Path) -> None:
    """The edge demo's ceiling: Canny edges of the tokenizer's reconstruction score a high F1
    against the clip's own edge hint (0.44 when shapes crossed half the frame per clip)."""
    import torch

    from ctrlpost.modalities import registry
    from ctrlpost.models.tiny_tokenizer import HaarCellDecoder, HaarCellEncoder

    modality = registry.get_modality("edge")
    params = registry.validate_params(modality, {"preset": "medium"})
    metric = registry.fidelity_metric(modality, params)
    hints = modality.build_generator(params)
    drawn = hints.draw(np.random.default_rng(0))
    encoder = HaarCellEncoder(cells=2, spatial=8, temporal=8)
    decoder = HaarCellDecoder(cells=2, spatial=8, temporal=8)
    scores = []
    for index in range(4):
        scene = synthetic.draw_scene(0, index, ["plain"])
        bgr = np.stack(list(synthetic.render(scene, np.random.default_rng(0), width=224,
                                             height=128, frames=17)))
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        video = torch.from_numpy(rgb).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
        (latent,) = encoder(video)
        decoded = ((decoder(latent)[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        reconstruction = np.ascontiguousarray(decoded.permute(1, 2, 3, 0).numpy())
        scores.append(metric.score(reconstruction, hints.render(rgb, drawn), drawn)["f1"])
    assert min(scores) > 0.7, scores
