"""The one atomic write: unique temp names, whole files only, nothing left on a failure, the
file and its folder synced; the temp sweep; the folder commit."""

from __future__ import annotations

import fnmatch
import multiprocessing
import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest

from ctrlpost import files

PAYLOAD_BYTES = 256 * 1024


def payload(writer: int, round_: int) -> bytes:
    """A file whose every byte says who wrote it: any mix of two writes is detectable."""
    return bytes([(writer * 31 + round_) % 251 + 1]) * PAYLOAD_BYTES


def is_whole(data: bytes) -> bool:
    return len(data) == PAYLOAD_BYTES and data == data[:1] * PAYLOAD_BYTES


def temps_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if fnmatch.fnmatch(p.name, files.TEMP_GLOB))


def test_text_and_bytes_writes_replace_the_file_and_leave_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "manifest.jsonl"
    assert files.write_text_atomic(target, "one\n") == target
    files.write_text_atomic(target, "two\nlines\n")
    assert target.read_bytes() == b"two\nlines\n"  # no newline translation
    files.write_bytes_atomic(tmp_path / "a.pickle", b"\x00\x01")
    assert (tmp_path / "a.pickle").read_bytes() == b"\x00\x01"
    assert temps_in(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # like any new file


def test_temp_names_are_unique_per_call_and_thread_and_match_the_sweep(tmp_path: Path) -> None:
    target = tmp_path / "iter_000000010_ema_model.pt"
    names: list[Path] = []
    lock = threading.Lock()

    def draw() -> None:
        drawn = [files.temp_path(target) for _ in range(200)]
        with lock:
            names.extend(drawn)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(names)) == len(names) == 800
    for name in names[:5]:
        assert name.parent == tmp_path  # same folder: the rename stays atomic
        assert fnmatch.fnmatch(name.name, files.TEMP_GLOB)
        assert name.name.startswith(f".{target.name}.{os.getpid()}.")
    long = files.temp_path(tmp_path / ("x" * 240))
    assert len(long.name) < 255


def _write_rounds(target: str, writer: int, rounds: int) -> None:
    for round_ in range(rounds):
        files.write_bytes_atomic(Path(target), payload(writer, round_))


def test_concurrent_writers_of_one_target_never_interleave(tmp_path: Path) -> None:
    """Processes and threads rewrite the same file while a reader checks every read: each read
    is one whole write, and no temp is left at the end."""
    target = tmp_path / "scores.json"
    files.write_bytes_atomic(target, payload(0, 0))
    stop = threading.Event()
    reads: list[bool] = []

    def reader() -> None:
        while not stop.is_set():
            reads.append(is_whole(target.read_bytes()))

    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_write_rounds, args=(str(target), w, 15))
                 for w in (1, 2, 3)]
    threads = [threading.Thread(target=_write_rounds, args=(str(target), w, 15)) for w in (4, 5)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for process in processes:
        process.start()
    for thread in threads:
        thread.start()
    for process in processes:
        process.join()
    for thread in threads:
        thread.join()
    stop.set()
    watcher.join()
    assert [p.exitcode for p in processes] == [0, 0, 0]
    assert reads and all(reads)
    assert is_whole(target.read_bytes())
    assert temps_in(tmp_path) == []


def test_a_failing_writer_leaves_the_target_untouched_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "meta.json"
    target.write_text("old")

    def dies_half_way(temp: Path) -> None:
        temp.write_text("half a file")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        files.write_atomic(target, dies_half_way)
    assert target.read_text() == "old"
    with pytest.raises(RuntimeError):
        files.write_atomic(tmp_path / "new.json", dies_half_way)
    assert not (tmp_path / "new.json").exists()
    assert temps_in(tmp_path) == []


def _killed_while_writing(target: str, started: multiprocessing.synchronize.Event) -> None:
    def stalls(temp: Path) -> None:
        temp.write_text("half a file")
        started.set()
        time.sleep(60)

    files.write_atomic(Path(target), stalls)


def test_a_killed_writer_leaves_only_a_temp_that_the_sweep_removes(tmp_path: Path) -> None:
    target = tmp_path / "recipe.toml"
    target.write_text("old")
    context = multiprocessing.get_context("fork")
    started = context.Event()
    child = context.Process(target=_killed_while_writing, args=(str(target), started))
    child.start()
    assert started.wait(30) and child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert target.read_text() == "old"
    left = temps_in(tmp_path)
    assert len(left) == 1 and f".recipe.toml.{child.pid}." in left[0]
    assert files.remove_temps(tmp_path) == [tmp_path / left[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.toml"]


class _Recorder:
    """Records, in order, the renames and the paths fsynced (through the fds os.open gave)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str]] = []
        self._paths: dict[int, str] = {}
        real_open, real_fsync, real_replace = os.open, os.fsync, os.replace

        def opened(path: os.PathLike[str] | str, flags: int, *args: int, **kw: int) -> int:
            fd = real_open(path, flags, *args, **kw)
            self._paths[fd] = os.fspath(path)
            return fd

        def fsynced(fd: int) -> None:
            self.events.append(("fsync", self._paths.get(fd, "?")))
            real_fsync(fd)

        def replaced(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
            self.events.append(("replace", os.fspath(dst)))
            real_replace(src, dst)

        monkeypatch.setattr(os, "open", opened)
        monkeypatch.setattr(os, "fsync", fsynced)
        monkeypatch.setattr(os, "replace", replaced)


def test_the_file_is_synced_before_the_rename_and_the_folder_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = _Recorder(monkeypatch)
    target = tmp_path / "versions.json"
    files.write_atomic(target, lambda temp: temp.write_text("{}"))
    kinds = [(kind, Path(path)) for kind, path in recorder.events]
    rename = kinds.index(("replace", target))
    assert any(kind == "fsync" and fnmatch.fnmatch(path.name, files.TEMP_GLOB)
               for kind, path in kinds[:rename])  # the content, under its temp name
    assert ("fsync", tmp_path) in kinds[rename + 1:]  # the rename itself


def test_commit_folder_syncs_the_tree_then_renames_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    temp = files.shared_temp_path(tmp_path / "step_000000002")
    assert temp.name == ".step_000000002.tmp"
    (temp / "sub").mkdir(parents=True)
    (temp / "__0_0.distcp").write_bytes(b"shard")
    (temp / "sub" / "x").write_bytes(b"x")
    recorder = _Recorder(monkeypatch)
    final = files.commit_folder(temp, tmp_path / "step_000000002")
    assert (final / "__0_0.distcp").read_bytes() == b"shard" and not temp.exists()
    synced = {Path(path) for kind, path in recorder.events if kind == "fsync"}
    assert {temp / "__0_0.distcp", temp / "sub" / "x", temp / "sub", temp, tmp_path} <= synced
    monkeypatch.undo()
    other = tmp_path / ".other.tmp"
    other.mkdir()
    with pytest.raises(OSError):  # a full folder is never replaced
        files.commit_folder(other, final)
    assert other.is_dir() and (final / "__0_0.distcp").is_file()


def test_commit_file_moves_a_finished_file(tmp_path: Path) -> None:
    partial = tmp_path / "base_model.pt.abc.incomplete"
    partial.write_bytes(b"weights")
    assert files.commit_file(partial, tmp_path / "base_model.pt") == tmp_path / "base_model.pt"
    assert (tmp_path / "base_model.pt").read_bytes() == b"weights" and not partial.exists()


def test_remove_temps_takes_temp_names_only(tmp_path: Path) -> None:
    keep = ["recipe.toml", ".train.lock", ".tmp", "step_000000001"]
    for name in keep:
        (tmp_path / name).write_text("x") if "." in name else (tmp_path / name).mkdir()
    (tmp_path / ".recipe.toml.tmp").write_text("half")
    (tmp_path / ".step_000000002.tmp").mkdir()
    (tmp_path / ".step_000000002.tmp" / ".x.1.tmp").write_text("inside")
    (tmp_path / "step_000000001" / ".meta.json.42.0-ab.tmp").write_text("half")
    assert files.remove_temps(tmp_path) == [tmp_path / ".recipe.toml.tmp",
                                            tmp_path / ".step_000000002.tmp"]
    assert files.remove_temps(tmp_path, recursive=True) == [
        tmp_path / "step_000000001" / ".meta.json.42.0-ab.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    assert files.remove_temps(tmp_path / "missing") == []
