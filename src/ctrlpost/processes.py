"""Keeping helper processes from outliving the process they work for.

A process killed with SIGKILL cannot stop its children. Without a guard, ``kill -9`` of
``ctrlpost train`` leaves its ranks training on, unseen, writing checkpoints into the run folder
that a restarted run is about to use, and leaves each rank's data-loader workers holding memory.
Two guards, both no-ops where the platform lacks what they need:

* :func:`die_with_launcher`: a rank asks the kernel (Linux ``PR_SET_PDEATHSIG``) for SIGKILL when
  the launcher that started it dies, and leaves at once if it is already gone. The launcher names
  itself in the rank's environment (:data:`LAUNCHER_ENV`), and the rank arms the guard before it
  imports anything slow, so a ``kill -9`` during the ranks' start leaves nothing behind either;
  :func:`die_with_parent` is the weaker form for ranks of another launcher (torchrun);
* :func:`watch_owner`: a data-loader worker, whose parent is a fork server rather than the rank,
  polls the rank and leaves once it is gone (a zombie counts as gone, and a recycled pid is told
  apart by its start time).

And one for the end of a rank's life: :func:`exit_without_teardown` lets a rank that finished
its work leave before the interpreter and the C++ libraries tear themselves down.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1
# "<pid>:<start time>" of the `ctrlpost train` process that started the ranks.
LAUNCHER_ENV = "CTRLPOST_LAUNCHER"


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (state first), or None without procfs or process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2, the command name, may itself hold spaces and parentheses.
    return stat.rsplit(")", 1)[1].split()


@dataclass(frozen=True)
class ProcessIdentity:
    """A process, recognisable even after its pid is recycled.

    Attributes:
        pid: Its process id.
        start: Its start time in clock ticks since boot (Linux), or None where unknown.
    """

    pid: int
    start: str | None

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity:
        """The process now running as ``pid``."""
        fields = _stat_fields(pid)
        return cls(pid, fields[19] if fields else None)

    @classmethod
    def current(cls) -> ProcessIdentity:
        return cls.of(os.getpid())

    def alive(self) -> bool:
        """Whether the process still runs (not exited, not a zombie, not another one's pid)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by someone else: the start time below decides
        fields = _stat_fields(self.pid)
        if fields is None:
            return self.start is None
        return fields[0] not in ("Z", "X") and (self.start is None or fields[19] == self.start)


def _request_parent_death_signal() -> bool:
    """Ask the kernel for SIGKILL when the parent dies; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0)


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux; elsewhere a no-op).

    Without the parent's identity a parent that died before the request is seen only as a
    change of ``getppid()`` during this call (or as being adopted by init).
    """
    parent = os.getppid()
    if not _request_parent_death_signal():
        return
    if os.getppid() != parent or parent == 1:  # the parent died before the request took effect
        os._exit(1)


def launcher_environment() -> dict[str, str]:
    """What a launcher adds to its ranks' environment so they can arm :func:`die_with_launcher`."""
    me = ProcessIdentity.current()
    return {LAUNCHER_ENV: f"{me.pid}:{me.start or ''}"}


def launcher_from_environment() -> ProcessIdentity | None:
    """The launcher named in this process's environment, if any."""
    value = os.environ.get(LAUNCHER_ENV, "")
    pid, _, start = value.partition(":")
    return ProcessIdentity(int(pid), start or None) if pid.isdigit() else None


def die_with_launcher(launcher: ProcessIdentity) -> None:
    """Have the kernel SIGKILL this process when ``launcher``, its parent, dies; leave at once
    (``os._exit(1)``) when the launcher is already gone or is not the parent any more.

    The check after the request is against the launcher's own identity, not against
    ``getppid()`` before the request: when the launcher died while this process was starting,
    both reads of ``getppid()`` give the adopting process and could not tell.
    """
    armed = _request_parent_death_signal()
    if not launcher.alive() or (armed and os.getppid() != launcher.pid):
        os._exit(1)


def watch_owner(owner: ProcessIdentity, *, interval_s: float = 0.5) -> threading.Thread:
    """Start a daemon thread that ends this process (``os._exit(0)``) once ``owner`` is gone."""

    def watch() -> None:
        while owner.alive():
            time.sleep(interval_s)
        os._exit(0)

    thread = threading.Thread(target=watch, name="ctrlpost-owner-watch", daemon=True)
    thread.start()
    return thread


def exit_without_teardown() -> Callable[[], None]:
    """Arm an exit handler that ends this process with ``os._exit(0)``; returns ``finished``,
    to be called once the process's work is done and its results are delivered.

    Until ``finished`` is called, exit goes on as usual (a failure keeps its exit status). After
    it, the process still runs Python's exit work up to this handler (multiprocessing flushes
    its queues, handlers registered later run first), then leaves with its logs and standard
    streams flushed, skipping module teardown and C++ static destructors. A rank needs this:
    its gloo process group outlives ``destroy_process_group`` (DTensor caches keep it), and when
    its threads meet the teardown while a peer closes its sockets, a rank that finished cleanly
    dies by SIGABRT or SIGSEGV, failing a run whose checkpoints are all written.

    Call it early: handlers run in reverse order of registration, so everything registered
    later (compile worker pools, for instance) still runs before it.
    """
    done = threading.Event()

    def leave() -> None:
        if not done.is_set():
            return
        # multiprocessing's own exit work (registered before this handler, so it would run
        # after it): stop daemonic children such as data-loader workers and release the
        # semaphores of their queues, which the resource tracker would otherwise report as
        # leaked.
        if "multiprocessing.util" in sys.modules:
            sys.modules["multiprocessing.util"]._exit_function()
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            # A stream closed or replaced by then has nothing left to lose.
            with contextlib.suppress(AttributeError, OSError, ValueError):
                stream.flush()
        os._exit(0)

    atexit.register(leave)
    return done.set
