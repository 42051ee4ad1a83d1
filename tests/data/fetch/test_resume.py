"""Re-runs: finished clips are kept, partial and altered files are never trusted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ctrlpost.data.fetch import runner as fetch
from ctrlpost.data.layout import exclusive
from ctrlpost.errors import DataError
from ctrlpost.recipe import DataSection

HERE = Path(__file__).resolve().parent
FAST, SLOW = "fastfastfa1", "slowslowsl1"


def url(video: str) -> str:
    return f"https://www.youtube.com/watch?v={video}"


def records(*videos: str) -> str:
    lines = [{"video_id": v, "url": url(v), "clip_id": f"{v}.{k}.mp4", "caption": f"{v} {k}",
              "span_start": f"00:00:0{k}", "span_end": f"00:00:0{k}.5"}
             for v in videos for k in range(2)]
    return "".join(json.dumps(line) + "\n" for line in lines)


def catalog(source: Path, *, slow_s: float = 0.0) -> dict[str, Any]:
    streams = [{"itag": 137, "height": 1080, "adaptive": True, "file": str(source)}]
    return {url(FAST): {"streams": streams},
            url(SLOW): {"streams": streams, "sleep_s": slow_s}}


def manifest_of(root: Path) -> dict[str, dict[str, Any]]:
    path = root / "manifest.jsonl"
    if not path.exists():
        return {}
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def wait_for(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_killed_run_resumes_without_refetching(
        tmp_path: Path, indexed_video: Callable[..., Path], write_recipe: Callable[..., Path],
        ctrlpost_exe: list[str]) -> None:
    source = indexed_video(tmp_path / "source.mp4", 48)
    jsonl = tmp_path / "hdvila.jsonl"
    jsonl.write_text(records(FAST, SLOW))
    root, log, catalog_file = tmp_path / "ds", tmp_path / "downloads.log", tmp_path / "cat.json"
    catalog_file.write_text(json.dumps(catalog(source, slow_s=60)))
    recipe = write_recipe(f'[data]\nroot = "{root}"\nnum_frames = 8\n[data.hdvila]\n'
                          f'jsonl = "{jsonl}"\n[data.fetch]\nworkers = 1\nmin_height = 704\n')
    env = {**os.environ, "PYTHONPATH": str(HERE), "FAKE_YOUTUBE_LOG": str(log),
           "CTRLPOST_YOUTUBE_FACTORY": "fake_youtube:from_env",
           "FAKE_YOUTUBE_CATALOG": str(catalog_file)}
    command = [*ctrlpost_exe, "fetch-data", str(recipe)]

    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # Kill it while the slow video is half downloaded and the fast one is committed.
        wait_for(lambda: {f"{FAST}.0", f"{FAST}.1"} <= set(manifest_of(root))
                 and any((root / ".tmp").rglob("*.part")))
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
    assert sorted(p.name for p in (root / "videos").iterdir()) == [
        f"{FAST}.0.mp4", f"{FAST}.1.mp4"]
    assert log.read_text().split() == [url(FAST), url(SLOW)]

    catalog_file.write_text(json.dumps(catalog(source)))
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    # The fast video was not downloaded again; the slow one restarted from scratch.
    assert log.read_text().split() == [url(FAST), url(SLOW), url(SLOW)]
    manifest = manifest_of(root)
    assert {k: r["status"] for k, r in manifest.items()} == {
        f"{FAST}.0": "skipped", f"{FAST}.1": "skipped", f"{SLOW}.0": "ok", f"{SLOW}.1": "ok"}
    assert manifest[f"{SLOW}.1"]["frames"] == 12
    assert not (root / ".tmp").exists()


def data_section(root: Path, jsonl: Path) -> DataSection:
    return DataSection.model_validate({
        "root": str(root), "source": "hdvila", "num_frames": 8,
        "hdvila": {"jsonl": str(jsonl)}, "fetch": {"workers": 2, "min_height": 704}})


def test_altered_files_are_fetched_again_and_metas_repaired(
        tmp_path: Path, indexed_video: Callable[..., Path], fake_youtube: ModuleType) -> None:
    source = indexed_video(tmp_path / "source.mp4", 48)
    jsonl = tmp_path / "hdvila.jsonl"
    jsonl.write_text(records(FAST, SLOW))
    root = tmp_path / "ds"
    factory = fake_youtube.FakeYouTube(catalog(source), log=tmp_path / "log")
    data = data_section(root, jsonl)
    first = fetch.fetch_data(data, seed=0, youtube_factory=factory)
    assert first.complete and len(factory.downloads()) == 2

    # A clip cut short (e.g. restored from an interrupted copy) and a deleted caption.
    clip = root / "videos" / f"{SLOW}.0.mp4"
    clip.write_bytes(clip.read_bytes()[:100])
    (root / "metas" / f"{FAST}.1.txt").unlink()
    second = fetch.fetch_data(data, seed=0, youtube_factory=factory)
    assert {r.id: r.status for r in second.records} == {
        f"{FAST}.0": "skipped", f"{FAST}.1": "skipped", f"{SLOW}.0": "ok", f"{SLOW}.1": "skipped"}
    assert sorted(factory.downloads()) == [url(FAST), url(SLOW), url(SLOW)]  # SLOW only again
    assert (root / "metas" / f"{FAST}.1.txt").read_text() == f"{FAST} 1"
    assert {r.id: r.sha256 for r in second.records} == {r.id: r.sha256 for r in first.records}


def test_a_second_run_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    data = DataSection.model_validate({"root": str(tmp_path / "ds"), "source": "synthetic",
                                       "num_frames": 4,
                                       "synthetic": {"num_clips": 1, "width": 32, "height": 16,
                                                     "frames": 4}})
    busy = pytest.raises(DataError, match="another `ctrlpost fetch-data`")
    with exclusive(tmp_path / "ds"), busy:
        fetch.fetch_data(data, seed=0)
    assert fetch.fetch_data(data, seed=0).complete
