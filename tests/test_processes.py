"""Helper processes do not outlive the process they work for, even one killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ctrlpost.processes import ProcessIdentity

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the guards use procfs and prctl (Linux)")


def eventually(condition: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def running(pid: int) -> bool:
    return ProcessIdentity(pid, None).alive()


def test_identity_tells_running_exited_zombie_and_recycled_apart() -> None:
    me = ProcessIdentity.current()
    assert me.alive() and me.start is not None
    assert not ProcessIdentity(me.pid, str(int(me.start) + 1)).alive()  # same pid, other process
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = ProcessIdentity(child.pid, None)
    assert eventually(lambda: not identity.alive())  # exited, not yet reaped: a zombie
    child.wait()
    assert not identity.alive()


WATCHER = """
import sys, time
from ctrlpost.processes import ProcessIdentity, watch_owner
watch_owner(ProcessIdentity(int(sys.argv[1]), sys.argv[2]), interval_s=0.1)
time.sleep(60)
"""


def test_a_watched_owner_killed_with_sigkill_takes_the_helper_along() -> None:
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    identity = ProcessIdentity.of(owner.pid)
    assert identity.start is not None
    helper = subprocess.Popen([sys.executable, "-c", WATCHER, str(owner.pid), identity.start])
    try:
        time.sleep(1.0)
        assert helper.poll() is None  # the owner lives: the helper stays
        owner.kill()
        owner.wait()
        assert eventually(lambda: helper.poll() is not None), "the helper outlived its owner"
        assert helper.returncode == 0
    finally:
        for process in (owner, helper):
            if process.poll() is None:
                process.kill()


PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "from ctrlpost.processes import die_with_parent; import time; die_with_parent(); "
    "print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "ready"
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_child_that_asked_dies_with_its_sigkilled_parent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert running(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert eventually(lambda: not running(child)), "the child outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()


EXIT_SCRIPT = """
import atexit, logging, sys
from pathlib import Path
from ctrlpost.processes import exit_without_teardown

folder, outcome = Path(sys.argv[1]), sys.argv[2]
# Registered first, so it runs after the guard's handler: stands for the interpreter's teardown.
atexit.register(lambda: (folder / "teardown-ran").touch())
finished = exit_without_teardown()
log = logging.getLogger("rank")
log.addHandler(logging.FileHandler(folder / "rank.log"))
log.warning("checkpoint written")
sys.stdout.write("still buffered")
if outcome == "finished":
    finished()
    sys.exit(0)
sys.exit(3)
"""


@pytest.mark.parametrize("outcome", ["finished", "failed"])
def test_a_finished_rank_skips_teardown_and_a_failed_one_keeps_its_status(
        tmp_path: Path, outcome: str) -> None:
    result = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(tmp_path), outcome],
                            capture_output=True, text=True, timeout=60)
    assert result.stdout == "still buffered"  # flushed either way
    assert (tmp_path / "rank.log").read_text() == "checkpoint written\n"
    if outcome == "finished":
        assert result.returncode == 0
        assert not (tmp_path / "teardown-ran").exists()
    else:
        assert result.returncode == 3
        assert (tmp_path / "teardown-ran").exists()
