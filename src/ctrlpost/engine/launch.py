"""`ctrlpost train`: validate everything in the parent, then start the ranks.

Already under torchrun or SLURM → run the worker directly (multi-node is
``torchrun --nnodes ... -m ctrlpost train RECIPE``); one process → run it in-process; N
processes → ``elastic_launch`` in-process. A failed rank becomes one line with its log path.

What rank 0 shows reaches the caller's console either way: the in-process rank calls it; a
launched rank 0 writes protocol lines on its stdout (:mod:`.metrics`), which
:class:`RankOutput` follows in the launcher's copy of that stream and decodes for it.

The launcher receives a :class:`~ctrlpost.engine.job.TrainingPlan`, never the recipe: the
in-process rank builds from that plan, and ranks in other processes load the resolved recipe
the plan carries, written into the run folder (:mod:`.rank`), not the user's file again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ctrlpost.engine.runtime import under_launcher
from ctrlpost.errors import LaunchError, RecipeError, Stopped
from ctrlpost.files import exclusive_lock
from ctrlpost.processes import launcher_environment
from ctrlpost.rundir import RunDir, rank_log_name

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.api import LogsSpecs

    from ctrlpost.engine.job import TrainingPlan
    from ctrlpost.engine.metrics import Console

# A record of the rank log (worker._setup_logging) starts with its date.
_LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d ")


def launch(plan: TrainingPlan, *, nproc: int, console: Console | None = None) -> None:
    """Run ``plan`` with ``nproc`` local processes (or as the rank a launcher made us);
    ``console`` shows rank 0's progress (default: plain lines)."""
    from ctrlpost.engine import worker
    from ctrlpost.engine.metrics import plain_console

    # One job per run folder: the launching process (or global rank 0 under torchrun) holds it.
    holds_lock = int(os.environ.get("RANK", "0")) == 0
    with run_lock(plan.run_dir) if holds_lock else contextlib.nullcontext():
        if under_launcher() or nproc == 1:
            worker.main(plan, console=console)
        else:
            _elastic(plan, nproc=nproc, console=console or plain_console)


def run_lock(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    """Hold ``<run>/.train.lock``: a second `ctrlpost train` of the same run fails at once
    instead of interleaving its checkpoints and metrics with the first one's."""
    return exclusive_lock(
        RunDir(run_dir).lock,
        busy=lambda: RecipeError(f"another `ctrlpost train` is running in {run_dir}",
                                 hint="wait for it (or stop it), or set job.name to start "
                                 "another run"),
        unwritable=lambda exc: RecipeError(f"cannot write the run folder {run_dir}: "
                                           f"{exc.strerror}",
                                           hint="set job.output_root to a writable folder"))


def _elastic(plan: TrainingPlan, *, nproc: int, console: Console) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from ctrlpost.engine import rank
    from ctrlpost.engine.checkpoint import complete_checkpoints
    from ctrlpost.engine.metrics import EVENTS_ENV
    from ctrlpost.engine.worker import stopped_line

    paths = RunDir(plan.run_dir)
    logs = paths.logs
    logs.mkdir(parents=True, exist_ok=True)
    output = RankOutput(console)
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"ctrlpost-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{_free_port()}", max_restarts=0,
        monitor_interval=0.1, start_method="spawn",
        # Every rank's output goes to the launcher's logs; rank 0's is followed from there to
        # the console (no tee: it would print each line prefixed `[default_role0]:`, past any
        # progress bar).
        logs_specs=_followed_logs(paths.launcher_logs, output),
    )
    # The launcher logs each failure with a traceback of its own internals, and each signal it
    # passes on; ours is one line. Its modules set their loggers' levels themselves, so the
    # parent's level is not enough.
    for name in ["torch.distributed.elastic", *logging.root.manager.loggerDict]:
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    threads = max(1, (os.cpu_count() or 1) // nproc)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    # Ranks are fresh interpreters running `python -m ctrlpost.engine.rank`, not pickled
    # functions: their first lines arm the parent-death guard against this process, named in
    # their environment, before the seconds of imports a pickled function would need first.
    os.environ.update(launcher_environment())
    # They load the recipe validated here, overrides applied, whatever the user's file says by
    # the time they start.
    handed = rank.write_recipe(plan.run_dir, plan.resolved_recipe)
    args = ["-u", "-m", rank.__name__, *rank.command_line(
        handed, recipe_name=plan.record.recipe_name, synthetic=plan.synthetic)]
    try:
        # Rank 0 writes its progress as protocol lines for `output` to decode.
        with _environment({EVENTS_ENV: "1"}):
            elastic_launch(config, sys.executable)(*args)
    except ChildFailedError as exc:
        failed_rank, failure = exc.get_first_failure()
        raise rank_failure(logs, failed_rank, failure.exitcode) from None
    except SignalException as exc:
        # The agent passed the signal on to the ranks, which saved and left, and waited for
        # them; what is saved is what the run folder holds now.
        saved = complete_checkpoints(paths.checkpoints)
        raise Stopped(stopped_line(saved[-1][0] if saved else None),
                      signum=int(exc.sigval)) from None
    finally:
        output.close()  # everything rank 0 wrote is shown before the command's last line


class RankOutput:
    """Rank 0's stdout and stderr, read from the launcher's files as they grow, every line
    decoded (:func:`~ctrlpost.engine.metrics.decode_event`) and handed to ``console``.

    A thread polls the files: the launcher redirects each rank's streams into files it names
    only when it starts the ranks (:func:`_followed_logs` passes them to :meth:`follow`), and a
    rank's output must not wait for the launcher's main thread, which sits in ``elastic_launch``.
    """

    def __init__(self, console: Console, *, poll_s: float = 0.05) -> None:
        self._console = console
        self._poll_s = poll_s
        self._streams: list[_Followed] = []
        self._lock = threading.Lock()  # the thread reads while `follow`/`close` swap files
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def follow(self, stdout: Path, stderr: Path) -> None:
        """Follow ``stdout`` and ``stderr`` (they need not exist yet) instead of the files of
        an earlier attempt, whose rest is shown first."""
        with self._lock:
            self._drain()
            self._streams = [_Followed(stdout, err=False), _Followed(stderr, err=True)]
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ctrlpost-rank0-output",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop following, after showing what the files still hold (a last line unended)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._drain()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                shown = sum(self._show(stream, stream.read_lines(final=False))
                            for stream in self._streams)
            if not shown:
                self._stop.wait(self._poll_s)

    def _drain(self) -> None:
        for stream in self._streams:
            self._show(stream, stream.read_lines(final=True))
            stream.close()
        self._streams = []

    def _show(self, stream: _Followed, lines: list[str]) -> int:
        from ctrlpost.engine.metrics import decode_event

        for line in lines:
            self._console(decode_event(line, err=stream.err))
        return len(lines)


class _Followed:
    """One file another process appends to, read line by line."""

    def __init__(self, path: Path, *, err: bool) -> None:
        self.path, self.err = path, err
        self._file: IO[bytes] | None = None
        self._pending = b""

    def read_lines(self, *, final: bool) -> list[str]:
        """The lines completed since the last call (with ``final``, an unended one too)."""
        if self._file is None:
            try:
                self._file = self.path.open("rb")
            except FileNotFoundError:  # the launcher has not started the rank yet
                return []
        self._pending += self._file.read()
        *complete, self._pending = self._pending.split(b"\n")
        if final and self._pending:
            complete.append(self._pending)
            self._pending = b""
        return [line.decode("utf-8", errors="replace").rstrip("\r") for line in complete]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _followed_logs(log_dir: Path, output: RankOutput) -> LogsSpecs:
    """The launcher's logs specification: every rank's streams into files under ``log_dir``
    (``<attempt>/<local rank>/stdout.log`` and ``stderr.log``), rank 0's followed by
    ``output`` once the launcher names them."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.api import LogsDest

    class FollowedLogs(DefaultLogsSpecs):
        def reify(self, envs: dict[int, dict[str, str]]) -> LogsDest:
            dest = super().reify(envs)
            output.follow(Path(dest.stdouts[0]), Path(dest.stderrs[0]))
            return dest

    return FollowedLogs(log_dir=str(log_dir), redirects=Std.ALL)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment (which the ranks inherit) for a block."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def rank_failure(logs: Path, rank: int, exitcode: int) -> LaunchError:
    """One line for a failed rank: how it ended, what its log says, and where that log is."""
    path = logs / rank_log_name(rank)
    return LaunchError(f"rank {rank} {_how_it_ended(exitcode)}: {last_error(path)}; see {path}")


def _how_it_ended(exitcode: int) -> str:
    """``failed (exit code 1)``, or ``was killed by SIGSEGV`` for a signal."""
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-exitcode).name}"
    return f"failed (exit code {exitcode})"


def last_error(path: Path) -> str:
    """What a rank's log says went wrong: the last line of its Python traceback, or, after a
    native crash, faulthandler's verdict and the innermost frame of the crashing thread."""
    if not path.is_file():
        return "no log written"
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()
             if line.strip()]
    last = _native_crash(lines) or (lines[-1] if lines else "empty log")
    # A user error raised in a rank already says what is wrong and what to do: no class path.
    return re.sub(r"^ctrlpost\.errors\.\w+: ", "", last)


def _native_crash(lines: list[str]) -> str | None:
    """``Fatal Python error: ... in File "...", line N in f`` if faulthandler's report is the
    last thing in the log (the log is appended to by every attempt of the run)."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Fatal Python error")]
    if not starts or any(_LOG_RECORD.match(line) for line in lines[starts[-1]:]):
        return None
    report = lines[starts[-1]:]
    # The crashing thread is "Current thread ...", its innermost frame listed first.
    current = [i for i, line in enumerate(report) if line.startswith("Current thread")]
    frame = next((line for line in report[current[0] + 1:] if line.startswith("File ")),
                 None) if current else None
    return f"{report[0]} in {frame}" if frame else report[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
