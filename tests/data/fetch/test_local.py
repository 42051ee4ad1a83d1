"""The local source: captions by file name from csv or jsonl, spans cut, problems reported."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ctrlpost.data.fetch import local
from ctrlpost.data.fetch import runner as fetch
from ctrlpost.errors import DataError
from ctrlpost.recipe import DataSection


@pytest.fixture
def videos(tmp_path: Path, indexed_video: Callable[..., Path]) -> Path:
    folder = tmp_path / "videos_in"
    folder.mkdir()
    for name in ("b.mp4", "a.mp4", "c.avi"):
        indexed_video(folder / name, 48)
    (folder / "notes.txt").write_text("not a video")
    return folder


def data(tmp_path: Path, videos: Path, captions: Path) -> DataSection:
    return DataSection.model_validate({"root": str(tmp_path / "ds"), "source": "local",
                                       "num_frames": 8,
                                       "local": {"videos": str(videos), "captions": str(captions)}})


def test_csv_captions_pair_by_file_and_cut_spans(
        tmp_path: Path, videos: Path, frame_indices: Callable[[Path], list[int]]) -> None:
    captions = tmp_path / "captions.csv"
    captions.write_text("file,caption,start,end\n"
                        "c.avi,\"a clip, from avi\",,\n"
                        "a.mp4,a dog runs,00:00:00.5,00:00:01\n"
                        "b.mp4,a cat sleeps,,\n")
    result = fetch.fetch_data(data(tmp_path, videos, captions), seed=0)
    assert result.complete and [r.id for r in result.records] == ["a", "b", "c"]
    root = tmp_path / "ds"
    assert (root / "metas/a.txt").read_text() == "a dog runs"
    assert (root / "metas/b.txt").read_text() == "a cat sleeps"
    assert (root / "metas/c.txt").read_text() == "a clip, from avi"
    assert frame_indices(root / "videos/a.mp4") == list(range(12, 24))
    assert (root / "videos/b.mp4").read_bytes() == (videos / "b.mp4").read_bytes()  # copied
    assert frame_indices(root / "videos/c.mp4") == list(range(48))                  # re-encoded
    by_id = {r.id: r for r in result.records}
    assert by_id["a"].span == (0.5, 1.0) and by_id["a"].source == str(videos / "a.mp4")
    meta = json.loads((root / "metas/a.json").read_text())
    assert meta["source"]["file"] == "a.mp4" and meta["measured"]["frames"] == 12


def test_jsonl_captions_and_a_missing_caption(tmp_path: Path, videos: Path) -> None:
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"video": "b.mp4", "caption": "a cat sleeps"}) + "\n\n"
                        + json.dumps({"file": "c", "caption": "stem match", "span_start": "0",
                                      "span_end": "00:00:01.25"}) + "\n")
    result = fetch.fetch_data(data(tmp_path, videos, captions), seed=0)
    by_id = {r.id: r for r in result.records}
    assert {k: r.status for k, r in by_id.items()} == {"a": "failed", "b": "ok", "c": "ok"}
    assert by_id["a"].error_class == "missing_caption"
    assert by_id["a"].error_message == f"no caption for a.mp4 in {captions}; add a row for it"
    assert by_id["c"].frames == 30
    assert not (tmp_path / "ds/videos/a.mp4").exists()


def test_malformed_captions_list_every_problem(tmp_path: Path, videos: Path) -> None:
    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"file": "a.mp4", "caption": ""}\n{oops\n'
                        '{"file": "b.mp4", "caption": "x", "span_start": "3"}\n'
                        '{"file": "c.avi", "caption": "x", "span_start": "2", "span_end": "1"}\n')
    with pytest.raises(DataError) as caught:
        local.read_captions(captions)
    assert caught.value.message.splitlines() == [
        "captions.jsonl:1: empty caption for a.mp4",
        "captions.jsonl:2: not JSON: Expecting property name enclosed in double quotes",
        "captions.jsonl:3: give both start and end, or neither",
        "captions.jsonl:4: span end '1' is not after its start '2'",
    ]
    bad_header = tmp_path / "captions.csv"
    bad_header.write_text("name,text\na.mp4,x\n")
    with pytest.raises(DataError, match="header must be file,caption"):
        local.read_captions(bad_header)


def test_missing_configuration_is_an_input_error(tmp_path: Path, videos: Path) -> None:
    with pytest.raises(DataError, match=r"needs \[data.local\].videos"):
        local.plan(None, None, num_videos=None)
    with pytest.raises(DataError, match="captions file not found"):
        local.plan(str(videos), str(tmp_path / "none.csv"), num_videos=None)


def test_same_stem_and_num_videos(tmp_path: Path, videos: Path,
                                  indexed_video: Callable[..., Path]) -> None:
    indexed_video(videos / "a.mov", 24)
    captions = tmp_path / "captions.csv"
    captions.write_text("file,caption\na.mp4,first\na.mov,second\nb.mp4,third\nc.avi,fourth\n")
    result = fetch.fetch_data(data(tmp_path, videos, captions), seed=0, num_videos=3)
    assert [(r.id, r.status, r.error_class) for r in result.records] == [
        ("local:a.mp4", "failed", "bad_record"), ("a", "ok", None), ("b", "ok", None)]
    assert "a.mp4 has the same clip id as a.mov" in (result.records[0].error_message or "")
    manifest = [json.loads(line) for line in
                (tmp_path / "ds/manifest.jsonl").read_text().splitlines()]
    assert [(m["id"], m["status"]) for m in manifest] == [
        ("a", "ok"), ("b", "ok"), ("local:a.mp4", "failed")]
