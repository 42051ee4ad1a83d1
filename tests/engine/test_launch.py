"""How the launcher reports a failed rank: a Python error, or a native crash of a library."""

from __future__ import annotations

import faulthandler
import subprocess
import sys
from pathlib import Path

from ctrlpost.engine.launch import last_error, rank_failure
from ctrlpost.engine.worker import crash_traces

from .conftest import TINY

CRASHING_RANK = """
import faulthandler, sys
from pathlib import Path
from ctrlpost.engine.worker import crash_traces

def inside_a_library():
    faulthandler._sigsegv()

with crash_traces(Path(sys.argv[1]), until_exit=True):
    inside_a_library()
"""


def test_a_segfaulting_rank_is_reported_with_its_signal_and_crashing_frame(tmp_path: Path) -> None:
    log = tmp_path / "rank1.log"
    log.write_text("2026-12-05 08:38:20,000 INFO ctrlpost.engine: an earlier record\n")
    crashed = subprocess.run([sys.executable, "-c", CRASHING_RANK, str(log)],
                             capture_output=True, text=True, timeout=120)
    assert crashed.returncode == -11, crashed.stderr
    message = str(rank_failure(tmp_path, 1, crashed.returncode))
    assert message.startswith("rank 1 was killed by SIGSEGV: Fatal Python error: Segmentation "
                              "fault in File "), message
    assert "line 7 in inside_a_library" in message, message
    assert message.endswith(f"; see {log}")
    assert "\n" not in message


def test_a_python_error_after_an_earlier_crash_is_the_one_reported(tmp_path: Path) -> None:
    log = tmp_path / "rank0.log"
    log.write_text(
        "Fatal Python error: Segmentation fault\n\n"
        "Current thread 0x00007f (most recent call first):\n"
        '  File "/old/attempt.py", line 3 in step\n'
        "2026-12-05 09:00:00,000 ERROR ctrlpost.engine: rank 0 failed:\n"
        "Traceback (most recent call last):\n"
        '  File "/x.py", line 1, in <module>\n'
        "ValueError: data.root does not exist\n")
    assert last_error(log) == "ValueError: data.root does not exist"
    assert str(rank_failure(tmp_path, 0, 1)).startswith(
        "rank 0 failed (exit code 1): ValueError: data.root does not exist; see ")


def test_a_rank_without_a_log_says_so(tmp_path: Path) -> None:
    assert last_error(tmp_path / "rank3.log") == "no log written"
    (tmp_path / "rank2.log").write_text("\n")
    assert last_error(tmp_path / "rank2.log") == "empty log"


def test_the_in_process_rank_gives_the_crash_handler_back(tmp_path: Path) -> None:
    was_enabled = faulthandler.is_enabled()
    with crash_traces(tmp_path / "rank0.log", until_exit=False):
        assert faulthandler.is_enabled()
    assert faulthandler.is_enabled() == was_enabled


def test_a_user_error_of_a_rank_is_reported_without_its_class_path(tmp_path: Path) -> None:
    log = tmp_path / "rank0.log"
    log.write_text("Traceback (most recent call last):\n"
                   '  File "/x.py", line 1, in <module>\n'
                   "ctrlpost.errors.LaunchError: checkpoint step_2 is damaged (missing shard)\n")
    assert last_error(log) == "checkpoint step_2 is damaged (missing shard)"


def test_a_failed_launched_rank_exits_1_with_its_traceback_only_in_its_log(
        tmp_path: Path) -> None:
    """Under a launcher the console gets the launcher's one line, not the rank's traceback."""
    import os

    code = ("from ctrlpost.engine import worker\n"
            "def boom(*args, **kwargs):\n"
            "    raise ValueError('boom')\n"
            "worker.train = boom\n"
            f"worker.main({str(TINY)!r}, [\"job.output_root='{tmp_path}'\"], "
            "worker.WorkerOptions())")
    env = {**os.environ, "TORCHELASTIC_RUN_ID": "test", "RANK": "0", "WORLD_SIZE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    logs = list(tmp_path.rglob("rank0.log"))
    assert len(logs) == 1 and last_error(logs[0]) == "ValueError: boom"
