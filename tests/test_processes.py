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


RANK_START = """
import os, sys, time
from ctrlpost.processes import die_with_launcher, launcher_from_environment
die_with_launcher(launcher_from_environment())
print("ready", flush=True)
time.sleep(60)
"""


def test_a_rank_whose_launcher_is_already_gone_leaves_at_once() -> None:
    """The launcher died while the rank was starting: the rank, adopted meanwhile, sees it by
    the launcher's identity (comparing getppid() before and after the request could not)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = f"{gone.pid}:{ProcessIdentity.of(os.getpid()).start}"  # that pid, another start time
    stranger = f"{os.getppid()}:{ProcessIdentity.of(os.getppid()).start}"  # alive, not the parent
    for launcher in (dead, stranger):
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-c", RANK_START], capture_output=True,
                                text=True, timeout=60, env={**os.environ,
                                                            "CTRLPOST_LAUNCHER": launcher})
        assert result.returncode == 1 and "ready" not in result.stdout, launcher
        assert time.monotonic() - started < 5


LAUNCHER = """
import os, subprocess, sys, time
from ctrlpost.processes import launcher_environment
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, **launcher_environment()})
assert child.stdout.readline().strip() == "ready"
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_rank_dies_with_its_sigkilled_launcher() -> None:
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, RANK_START],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout is not None
        rank = int(launcher.stdout.readline())
        assert running(rank)  # its launcher lives: the rank stays
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        assert eventually(lambda: not running(rank), timeout_s=2.0), "the rank outlived it"
    finally:
        if launcher.poll() is None:
            launcher.kill()


def test_the_rank_command_arms_the_guard_before_importing_torch() -> None:
    """`python -m ctrlpost.engine.rank` imports only the standard library before the guard."""
    code = ("import runpy, sys; sys.argv = ['rank', '--help']\n"
            "import ctrlpost.processes as p\n"
            "real = p.die_with_launcher\n"
            "def spy(launcher):\n"
            "    print('torch' in sys.modules, flush=True); real(launcher)\n"
            "p.die_with_launcher = spy\n"
            "runpy.run_module('ctrlpost.engine.rank', run_name='__main__')")
    me = ProcessIdentity.current()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env={**os.environ,
                                              "CTRLPOST_LAUNCHER": f"{me.pid}:{me.start}"})
    # This test is the named launcher and the parent: the guard lets the rank go on to parse
    # its arguments.
    assert result.stdout.splitlines()[0] == "False", result.stderr
    assert "usage: python -m ctrlpost.engine.rank" in result.stdout


LEAKY_RANK = """
import multiprocessing as mp, multiprocessing.util, sys  # imported before the guard, as torch does
from ctrlpost.processes import exit_without_teardown
finished = exit_without_teardown()
queues = [mp.get_context("spawn").Queue() for _ in range(3)]  # semaphores the tracker counts
worker = mp.get_context("spawn").Process(target=print, daemon=True)
worker.start()
finished()
sys.exit(0)
"""


def test_a_finished_rank_leaves_no_leaked_semaphore_warning() -> None:
    result = subprocess.run([sys.executable, "-c", LEAKY_RANK], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "leaked" not in result.stderr, result.stderr
