"""`ctrlpost verify` against damage that two decoded frames do not show: the manifest's sha256
(every clip fetch-data committed) and `--deep` (every frame of every clip)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from ctrlpost.cli import app
from ctrlpost.data.checks import full_decode_problem
from ctrlpost.data.fetch import manifest
from ctrlpost.data.fetch.manifest import ClipRecord
from ctrlpost.data.layout import sha256_of

from .conftest import embedding, write_clip, write_pickle

DIM = 64  # the tiny flavor's T5 width
FRAMES = 12  # data.num_frames of the test recipes
runner = CliRunner()


def write_recipe(path: Path, root: Path, data: str = "") -> Path:
    path.write_text(
        f'[job]\nname = "x"\n[data]\nroot = {json.dumps(str(root))}\nnum_frames = {FRAMES}\n'
        f'resolution = "128"\nnum_workers = 0\n{data}[model]\nflavor = "tiny"\n'
        '[[control]]\nmodality = "edge"\n[train]\nsteps = 1\n')
    return path


def verify(recipe: Path, *extra: str) -> tuple[int, dict[str, str], dict]:
    """Exit code, the data stage's problems by path, and its summary."""
    result = runner.invoke(app, ["verify", str(recipe), "--json", "--stages",
                                 "recipe,plugins,data", *extra])
    report = json.loads(result.stdout)
    problems = [(p["path"], p["message"]) for p in report["problems"] if p["stage"] == "data"]
    assert len(problems) == len(dict(problems)), f"more than one line for a file: {problems}"
    (stage,) = [s for s in report["stages"] if s["name"] == "data"]
    return result.exit_code, dict(problems), stage["summary"]


def write_manifest(root: Path) -> None:
    """Records as fetch-data writes them: every clip ``ok`` with its file's sha256."""
    records = [ClipRecord(id=p.stem, status="ok", source="test", sha256=sha256_of(p))
               for p in sorted((root / "videos").glob("*.mp4"))]
    manifest.save(root / "manifest.jsonl", records)


def overwrite_middle(path: Path, size: int = 2048, seed: int = 0) -> None:
    """``size`` random bytes written over the middle of the file (its length is unchanged)."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 - size // 2
    data[at:at + size] = np.random.default_rng(seed).integers(0, 256, size, np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_two_kilobytes_of_noise_are_caught_by_the_manifest_sha256(
        tmp_path: Path, make_dataset: Callable[..., Path]) -> None:
    # 256x144: large enough that the codec conceals the noise, as on real clips.
    root = make_dataset(["a", "b", "c"], frames=24, width=256, height=144, dim=DIM)
    recipe = write_recipe(tmp_path / "r.toml", root)
    write_manifest(root)
    code, problems, summary = verify(recipe)
    assert (code, problems, summary["sha256_checked"]) == (0, {}, 3)

    overwrite_middle(root / "videos" / "b.mp4")
    code, problems, summary = verify(recipe)
    assert code == 2 and list(problems) == ["videos/b.mp4"]
    message = problems["videos/b.mp4"]
    assert message.startswith("sha256 differs from manifest.jsonl's")
    assert f"run `ctrlpost fetch-data {recipe}` again" in message
    assert (summary["clips"], summary["ok"], summary["deep"]) == (3, 2, False)
    shown = runner.invoke(app, ["verify", str(recipe), "--stages", "recipe,plugins,data"])
    assert shown.exit_code == 2
    assert shown.stderr.splitlines() == [f"error: {recipe}: videos/b.mp4: {message}"]

    # What verify said before it read the manifest: both decoded frames are fine.
    (root / "manifest.jsonl").unlink()
    code, problems, summary = verify(recipe)
    assert (code, problems, summary["sha256_checked"]) == (0, {}, 0)


def test_clips_the_manifest_does_not_vouch_for_are_not_hashed(
        tmp_path: Path, make_dataset: Callable[..., Path]) -> None:
    root = make_dataset(["a", "b", "c"], frames=16, dim=DIM)
    recipe = write_recipe(tmp_path / "r.toml", root)
    write_manifest(root)
    records = manifest.load(root / "manifest.jsonl")
    records["b"] = ClipRecord(id="b", status="failed", source="test", error_class="bad_video")
    del records["c"]
    manifest.save(root / "manifest.jsonl", records.values())
    for name in ("a", "b", "c"):
        with open(root / "videos" / f"{name}.mp4", "ab") as handle:
            handle.write(b"trailing bytes change the hash, not the decoded frames")
    code, problems, summary = verify(recipe)
    assert (code, list(problems), summary["sha256_checked"]) == (2, ["videos/a.mp4"], 1)


def test_fetch_data_again_repairs_what_verify_names(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    recipe = write_recipe(tmp_path / "r.toml", root, data=(
        'source = "synthetic"\n[data.synthetic]\nnum_clips = 3\nwidth = 64\nheight = 48\n'
        'frames = 16\n'))
    fetched = runner.invoke(app, ["fetch-data", str(recipe)])
    assert fetched.exit_code == 0, fetched.output
    names = sorted(p.stem for p in (root / "videos").glob("*.mp4"))
    for i, name in enumerate(names):
        write_pickle(root / "t5_xxl" / f"{name}.pickle", [embedding(4, DIM, seed=i)])
    assert verify(recipe)[:2] == (0, {})
    bad = root / "videos" / f"{names[1]}.mp4"
    intact = bad.read_bytes()
    overwrite_middle(bad)
    code, problems, _ = verify(recipe)
    assert code == 2 and "sha256 differs" in problems[f"videos/{bad.name}"]

    again = runner.invoke(app, ["fetch-data", str(recipe)])
    assert again.exit_code == 0, again.output
    assert bad.read_bytes() == intact  # the synthetic source is deterministic
    status = {r.id: r.status for r in manifest.load(root / "manifest.jsonl").values()}
    assert status == {names[0]: "skipped", names[1]: "ok", names[2]: "skipped"}
    code, problems, summary = verify(recipe)
    assert (code, problems, summary["sha256_checked"]) == (0, {}, 3)


def zero_frame_data(path: Path, start: float, end: float) -> None:
    """Zero the bytes between fractions ``start`` and ``end`` of the frame data (``mdat``),
    leaving the index (``moov``) intact."""
    data = bytearray(path.read_bytes())
    first, last = data.find(b"mdat") + 4, data.find(b"moov") - 4
    lo, hi = first + int((last - first) * start), first + int((last - first) * end)
    data[lo:hi] = bytes(hi - lo)
    path.write_bytes(bytes(data))


def test_deep_decodes_every_frame_where_plain_verify_reads_two(
        tmp_path: Path, make_dataset: Callable[..., Path]) -> None:
    root = make_dataset(["a", "b", "c", "d"], frames=48, dim=DIM)  # no manifest: nothing hashed
    recipe = write_recipe(tmp_path / "r.toml", root)
    assert verify(recipe, "--deep")[:2] == (0, {})

    # Frames of the first GOPs no longer decode; the first frame and the last GOP still do,
    # and OpenCV's sequential read gives up at the damage.
    zero_frame_data(root / "videos" / "b.mp4", 0.1, 0.2)
    truncated = root / "videos" / "d.mp4"
    truncated.write_bytes(truncated.read_bytes()[:truncated.stat().st_size // 2])
    code, problems, summary = verify(recipe)
    assert code == 2 and list(problems) == ["videos/d.mp4"]  # b passes: only two frames read
    assert summary["sha256_checked"] == 0

    code, problems, summary = verify(recipe, "--deep")
    assert code == 2 and sorted(problems) == ["videos/b.mp4", "videos/d.mp4"]
    assert re.match(r"only \d+ of its 48 frames decode", problems["videos/b.mp4"])
    assert "replace it, or delete it" in problems["videos/b.mp4"]
    assert "cannot open video" in problems["videos/d.mp4"]  # once, by the quick check
    assert (summary["ok"], summary["deep"]) == (2, True)


def test_full_decode_names_short_and_wrongly_sized_clips(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "a.mp4", 10, 128, 72)
    assert full_decode_problem(clip, frames=10, size=(128, 72)) is None
    assert (full_decode_problem(clip, frames=12, size=(128, 72)) or "").startswith(
        "only 10 of its 12 frames decode")
    assert (full_decode_problem(clip, frames=10, size=(64, 72)) or "").startswith(
        "frame 0 is 128x72, the clip is 64x72")
