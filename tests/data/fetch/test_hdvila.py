"""The hdvila source end to end against the fake YouTube: choice, cuts, failures, exit codes."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from typer.testing import CliRunner

from ctrlpost.cli import app
from ctrlpost.data.fetch import hdvila
from ctrlpost.data.fetch import runner as fetch
from ctrlpost.recipe import DataSection

STREAMS = [
    {"itag": 18, "height": 360, "adaptive": False},
    {"itag": 22, "height": 720, "adaptive": False},
    {"itag": 136, "height": 720, "adaptive": True},
    {"itag": 137, "height": 1080, "adaptive": True},
    {"itag": 399, "height": 1080, "adaptive": True, "codec": "av01.0.08M.08"},
]


def url(video: str) -> str:
    return f"https://www.youtube.com/watch?v={video}"


def record(video: str, k: int, start: str, end: str) -> dict[str, Any]:
    return {"video_id": video, "url": url(video), "clip_id": f"{video}.{k}.mp4",
            "span_start": start, "span_end": end, "caption": f"caption of {video}.{k}"}


def write_jsonl(path: Path, records: list[dict[str, Any] | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                            for r in records))
    return path


def test_takes_all_clips_of_the_first_videos_and_stops_reading(tmp_path: Path) -> None:
    jsonl = write_jsonl(tmp_path / "m.jsonl", [
        record("aaaaaaaaaaa", 0, "00:00:00", "00:00:01"),
        record("aaaaaaaaaaa", 1, "00:00:01", "00:00:02.5"),
        "{not json",
        {**record("bbbbbbbbbbb", 0, "00:00:02", "00:00:01")},       # end before start
        record("bbbbbbbbbbb", 1, "00:00:00", "00:00:01"),
        record("aaaaaaaaaaa", 1, "00:00:05", "00:00:06"),            # duplicate clip id
        {**record("bbbbbbbbbbb", 2, "0", "1"), "caption": None},
        record("ccccccccccc", 0, "00:00:00", "00:00:01"),            # third video: stop here
        "{never read",
    ])
    videos, rejected = hdvila.read_videos(jsonl, num_videos=2)
    assert [(v.key, [c.id for c in v.clips]) for v in videos] == [
        ("aaaaaaaaaaa", ["aaaaaaaaaaa.0", "aaaaaaaaaaa.1"]), ("bbbbbbbbbbb", ["bbbbbbbbbbb.1"])]
    assert videos[0].clips[1].span == (1.0, 2.5)
    assert [(r.id, r.error_class) for r in rejected] == [
        ("m.jsonl:3", "bad_record"), ("bbbbbbbbbbb.0", "bad_record"),
        ("m.jsonl:6", "bad_record"), ("bbbbbbbbbbb.2", "bad_record")]
    assert "not after its start" in (rejected[1].error_message or "")
    assert "duplicate clip_id 'aaaaaaaaaaa.1'" in (rejected[2].error_message or "")
    assert "'caption' is missing" in (rejected[3].error_message or "")


@pytest.fixture
def youtube_world(tmp_path: Path, indexed_video: Callable[..., Path]) -> dict[str, Any]:
    """Six videos, each failing (or not) in its own way, and their records, shuffled."""
    source = indexed_video(tmp_path / "source.mp4", 72)
    specs = [{**s, "file": str(source)} for s in STREAMS]
    catalog = {
        url("okokokokok1"): {"streams": specs},
        url("netnetnet01"): {"streams": specs, "fail": ["network", "network"]},
        url("botbotbot01"): {"streams": specs, "always": "bot"},
        url("gonegonegon"): {"streams": specs, "always": "unavailable"},
        url("lowlowlow01"): {"streams": [specs[0], {**specs[2], "itag": 135, "height": 480}]},
        url("shortshort1"): {"streams": specs},
    }
    records: list[dict[str, Any] | str] = [
        record("okokokokok1", 0, "00:00:00.500", "00:00:01.500"),
        record("okokokokok1", 1, "00:00:01.000", "00:00:02.5"),
        record("netnetnet01", 0, "00:00:00", "00:00:01"),
        record("botbotbot01", 0, "00:00:00", "00:00:01"),
        record("gonegonegon", 0, "00:00:00", "00:00:01"),
        record("lowlowlow01", 0, "00:00:00", "00:00:01"),
        record("shortshort1", 0, "00:00:00", "00:00:00.2"),      # 5 frames < num_frames 8
        record("shortshort1", 1, "00:00:02", "00:00:02.75"),
    ]
    random.Random(3).shuffle(records)   # captions must pair by id, not by position
    records.insert(4, '{"url": 5}')
    return {"catalog": catalog, "jsonl": write_jsonl(tmp_path / "hdvila.jsonl", records)}


def data_section(tmp_path: Path, jsonl: Path, **fetch_options: Any) -> DataSection:
    return DataSection.model_validate({
        "root": str(tmp_path / "ds"), "source": "hdvila", "num_frames": 8,
        "hdvila": {"jsonl": str(jsonl), "num_videos": 10},
        "fetch": {"workers": 3, "retries": 2, "min_height": 704, **fetch_options}})


def test_fetch_records_every_failure_and_keeps_going(
        tmp_path: Path, youtube_world: dict[str, Any], fake_youtube: ModuleType,
        frame_indices: Callable[[Path], list[int]]) -> None:
    factory = fake_youtube.FakeYouTube(youtube_world["catalog"])
    data = data_section(tmp_path, youtube_world["jsonl"])
    result = fetch.fetch_data(data, seed=0, youtube_factory=factory, backoff_s=0.01)

    by_id = {r.id: r for r in result.records}
    assert {k: (r.status, r.error_class) for k, r in by_id.items()} == {
        "okokokokok1.0": ("ok", None), "okokokokok1.1": ("ok", None),
        "netnetnet01.0": ("ok", None), "botbotbot01.0": ("failed", "bot_detection"),
        "gonegonegon.0": ("failed", "unavailable"),
        "lowlowlow01.0": ("failed", "too_low_resolution"),
        "shortshort1.0": ("failed", "too_short"), "shortshort1.1": ("ok", None),
        "hdvila.jsonl:5": ("failed", "bad_record")}
    assert result.failures_by_class == {"bot_detection": 1, "unavailable": 1,
                                        "too_low_resolution": 1, "too_short": 1, "bad_record": 1}
    # Only network errors are retried: two failures, then the third attempt works.
    assert by_id["netnetnet01.0"].attempts == 3 and by_id["botbotbot01.0"].attempts == 1
    assert factory.constructed[url("netnetnet01")] == 3
    assert factory.constructed[url("botbotbot01")] == 1
    assert "best mp4 stream is 480p" in (by_id["lowlowlow01.0"].error_message or "")
    assert by_id["shortshort1.0"].error_message == (
        "5 frames after cutting; [data].num_frames is 8")

    root = tmp_path / "ds"
    ok = by_id["okokokokok1.0"]
    assert ok.stream and ok.stream["itag"] == 137 and ok.stream["adaptive"] is True
    assert (ok.width, ok.height, ok.fps, ok.frames, ok.span) == (64, 48, 24.0, 24, (0.5, 1.5))
    # Each clip holds exactly its span's frames and its own caption.
    assert frame_indices(root / "videos/okokokokok1.0.mp4") == list(range(12, 36))
    assert frame_indices(root / "videos/okokokokok1.1.mp4") == list(range(24, 60))
    assert frame_indices(root / "videos/shortshort1.1.mp4") == list(range(48, 66))
    for clip in ("okokokokok1.0", "okokokokok1.1", "netnetnet01.0", "shortshort1.1"):
        assert (root / f"metas/{clip}.txt").read_text() == f"caption of {clip}"
        meta = json.loads((root / f"metas/{clip}.json").read_text())
        assert meta["source"]["clip_id"] == f"{clip}.mp4"
        assert meta["measured"]["sha256"] == by_id[clip].sha256
    assert sorted(p.name for p in (root / "videos").iterdir()) == [
        "netnetnet01.0.mp4", "okokokokok1.0.mp4", "okokokokok1.1.mp4", "shortshort1.1.mp4"]
    manifest = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    assert {m["id"]: m["error_class"] for m in manifest} == {
        k: r.error_class for k, r in by_id.items()}
    assert not (root / ".tmp").exists()


def test_cli_exit_codes(tmp_path: Path, youtube_world: dict[str, Any],
                        write_recipe: Callable[..., Path], fake_youtube: ModuleType) -> None:
    catalog_file = tmp_path / "catalog.json"
    catalog = {k: v for k, v in youtube_world["catalog"].items() if "netnet" not in k}
    catalog_file.write_text(json.dumps(catalog))
    env = {"CTRLPOST_YOUTUBE_FACTORY": "fake_youtube:from_env",
           "FAKE_YOUTUBE_CATALOG": str(catalog_file)}
    fake_youtube._FROM_ENV = None
    recipe = write_recipe(
        f'[data]\nroot = "{tmp_path / "ds"}"\nnum_frames = 8\n'
        f'[data.hdvila]\njsonl = "{youtube_world["jsonl"]}"\n[data.fetch]\nworkers = 2\n')
    runner = CliRunner()
    failed = runner.invoke(app, ["fetch-data", str(recipe)], env=env)
    assert failed.exit_code == 1, failed.output
    assert "failed (" in failed.output and "bot_detection: 1" in failed.output
    assert "hint: YouTube wants proof this is not a bot" in failed.output
    partial = runner.invoke(app, ["fetch-data", str(recipe), "--accept-partial"], env=env)
    assert partial.exit_code == 0, partial.output
    assert "skipped" in partial.output

    missing = runner.invoke(app, ["fetch-data", str(recipe), "--set",
                                  f'data.hdvila.jsonl="{tmp_path / "none.jsonl"}"'], env=env)
    assert missing.exit_code == 2
    assert f"error: HD-VILA metadata not found: {tmp_path / 'none.jsonl'}" in missing.output
    assert "hint: download it with `wget -O" in missing.output
    assert not (tmp_path / "ds" / "videos" / "netnetnet01.0.mp4").exists()
