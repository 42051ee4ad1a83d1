"""What `ctrlpost train` shows while it trains: a live bar on a terminal, plain lines elsewhere,
never the elastic launcher's ``[default_role0]:`` prefix; and the pieces that carry rank 0's
progress there (the events, their line protocol, the follower of rank 0's output files)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path

import pytest
import torch

from ctrlpost.engine.launch import RankOutput
from ctrlpost.engine.metrics import (
    EVENT_MARK,
    ConsoleEvent,
    EventWriter,
    Note,
    Output,
    RunLogger,
    Started,
    StepDone,
    decode_event,
    encode_event,
    plain_console,
)
from ctrlpost.engine.trainer import StepMetrics

from .conftest import TINY, run_dir

# Six synthetic steps (no weights or data files needed), a logged step every 2, a save at 3.
SIX_STEPS = ["--synthetic", "--set", "train.steps=6", "--set", "logging.every_steps=2",
             "--set", "checkpoint.every_steps=3", "--set", "validation.every_steps=0"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def train_command(exe: list[str], output: Path, nproc: str) -> list[str]:
    return [*exe, "train", str(TINY), "--set", f"job.output_root='{output}'", *SIX_STEPS,
            "--nproc", nproc]


def quiet_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1"}


def run_on_a_terminal(command: list[str], *, columns: int = 160, timeout_s: float = 120.0,
                      ctrl_c_at: re.Pattern[str] | None = None) -> tuple[int, str]:
    """Run ``command`` with a pseudo-terminal as stdin, stdout and stderr; its exit code and
    everything it wrote, escape sequences removed. With ``ctrl_c_at``, press Ctrl-C (SIGINT to
    the command's process group, as a terminal does) once the output matches it."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    process = subprocess.Popen(command, stdin=terminal, stdout=terminal, stderr=terminal,
                               env={**quiet_env(), "TERM": "xterm-256color"},
                               start_new_session=True)
    os.close(terminal)
    written = bytearray()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: every holder of the terminal closed it
                    break
                if not chunk:
                    break
                written += chunk
                if ctrl_c_at is not None and ctrl_c_at.search(ANSI.sub("", written.decode(
                        "utf-8", errors="replace"))):
                    os.killpg(process.pid, signal.SIGINT)
                    ctrl_c_at = None
            elif process.poll() is not None:
                break
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
        os.close(controller)
    return code, ANSI.sub("", written.decode("utf-8", errors="replace"))


@pytest.mark.parametrize("nproc", ["1", "2"])
def test_a_terminal_shows_a_live_bar_with_the_notes_above_it(ctrlpost_exe: list[str],
                                                             tmp_path: Path, nproc: str) -> None:
    code, shown = run_on_a_terminal(train_command(ctrlpost_exe, tmp_path, nproc))
    assert code == 0, shown[-3000:]
    bar = re.compile(r"step (\d)/6 [━╸╺ ]+ loss (\d+\.\d{4}|-) (\d+\.\d\d|-) samples/s "
                     r"elapsed \d+:\d\d:\d\d ETA (\d+:\d\d:\d\d|-:--:--)")
    drawn = bar.findall(shown)
    steps = {int(step) for step, *_ in drawn}
    assert steps >= {6} and len(steps) >= 3, shown[-3000:]  # redrawn as steps finish
    assert any(loss != "-" and rate != "-" for _, loss, rate, _ in drawn)
    assert any(eta[0].isdigit() for *_, eta in drawn), "no ETA once the pace is known"
    # Notes are lines of their own, above the bar (it redraws below them), with no prefix.
    lines = [line.strip() for line in shown.replace("\r", "\n").split("\n")]
    assert any(line.startswith("training edge_tiny: flavor tiny") for line in lines)
    assert any(line.startswith("checkpoint saved at step 3: ") for line in lines)
    assert any(line.startswith("done: step 6, checkpoints in ") for line in lines)
    assert "[default_role" not in shown and EVENT_MARK not in shown


@pytest.mark.slow
@pytest.mark.parametrize("nproc", ["1", "2"])
def test_ctrl_c_under_the_bar_saves_and_says_so_below_it(ctrlpost_exe: list[str],
                                                         tmp_path: Path, nproc: str) -> None:
    command = [*train_command(ctrlpost_exe, tmp_path, nproc), "--set", "train.steps=1000",
               "--set", "checkpoint.every_steps=500"]
    code, shown = run_on_a_terminal(command, ctrl_c_at=re.compile(r"step [2-9]/1000 "))
    assert code == 130, shown[-3000:]
    saved = max(int(name.split("_")[1]) for name in
                (p.name for p in (run_dir(tmp_path) / "checkpoints").glob("step_*")))
    last = shown.replace("\r", "\n").strip().split("\n")[-1]
    assert last == f"stopped at step {saved}, checkpoint saved; run the same command to resume"


def test_a_pipe_gets_one_plain_line_per_logged_step_without_the_launchers_prefix(
        ctrlpost_exe: list[str], tmp_path: Path) -> None:
    result = subprocess.run(train_command(ctrlpost_exe, tmp_path, "2"), capture_output=True,
                            text=True, env=quiet_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert [line.split("  ")[0] for line in lines if line.startswith("step ")] == [
        "step 2/6", "step 4/6", "step 6/6"]
    assert all(re.fullmatch(r"step \d/6  loss \d+\.\d{4}  lr \S+  grad \S+  \d+\.\d\d "
                            r"samples/s  \d+ tok/s  data-wait \d+\.\d%", line)
               for line in lines if line.startswith("step "))
    assert lines[0].startswith("training edge_tiny: flavor tiny, 2 rank(s) on cpu, 6 steps")
    assert lines[-1].startswith("done: step 6, checkpoints in ")
    assert sum(line.startswith("checkpoint saved at step ") for line in lines) == 2
    everything = result.stdout + result.stderr
    assert "[default_role" not in everything and EVENT_MARK not in everything
    assert "\x1b[" not in everything  # no bar, no colour
    # Each rank's log, and the launcher's copy of each rank's output, are still written.
    logs = run_dir(tmp_path) / "logs"
    assert (logs / "rank0.log").is_file() and (logs / "rank1.log").is_file()
    (rank0_stdout,) = (logs / "launcher").rglob("0/stdout.log")
    assert any((logs / "launcher").rglob("1/stdout.log"))
    assert sum(line.startswith(EVENT_MARK) for line in
               rank0_stdout.read_text().splitlines()) >= 6  # a protocol line per step at least


# --- the events and their line protocol ---------------------------------------------------------


EVERY_EVENT: list[ConsoleEvent] = [
    Started(step=20, total=40),
    StepDone(step=21, total=40, loss=0.25, samples_per_s=3.5),
    StepDone(step=25, total=40, loss=0.5, samples_per_s=4.0,
             record={"step": 25, "loss": 0.5, "fidelity": {"f1": 0.75}}),
    Note("validation at step 25: f1 0.75; 2 clip(s) in 1.5 s"),
    Output("a line of its own", err=False),
]


@pytest.mark.parametrize("event", EVERY_EVENT, ids=lambda e: type(e).__name__)
def test_every_event_crosses_the_protocol_unchanged(event: ConsoleEvent) -> None:
    line = encode_event(event)
    assert line.startswith(EVENT_MARK) and "\n" not in line
    assert decode_event(line) == event


def test_other_lines_are_rank_output_as_written() -> None:
    assert decode_event("UserWarning: something") == Output("UserWarning: something")
    assert decode_event("Traceback", err=True) == Output("Traceback", err=True)
    damaged = EVENT_MARK + '{"event": "Started", "step": '
    assert decode_event(damaged) == Output(damaged)
    unknown = EVENT_MARK + '{"event": "Exploded"}'
    assert decode_event(unknown) == Output(unknown)
    not_an_object = EVENT_MARK + "[1, 2]"
    assert decode_event(not_an_object) == Output(not_an_object)
    # A protocol line on stderr is not rank 0's protocol: shown as it is.
    assert decode_event(encode_event(Note("x")), err=True) == Output(encode_event(Note("x")),
                                                                      err=True)


def test_plain_lines_show_logged_steps_notes_and_output_on_their_streams(
        capsys: pytest.CaptureFixture[str]) -> None:
    record = {"step": 4, "loss": 0.123456, "lr": 1e-3, "grad_norm": 0.5, "skipped_steps": 0,
              "samples_per_s": 2.0, "tokens_per_s": 640.0, "data_wait_pct": 1.5}
    events: list[ConsoleEvent] = [
        Started(0, 40), StepDone(3, 40, 0.2, 2.0), StepDone(4, 40, 0.1, 2.0, record=record),
        Note("checkpoint saved"), Output("from a library"), Output("a warning", err=True)]
    for event in events:
        plain_console(event)
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "step  4/40  loss 0.1235  lr 0.001  grad 0.5  2.00 samples/s  640 tok/s  "
        "data-wait 1.5%", "checkpoint saved", "from a library"]
    assert err == "a warning\n"


def test_rank_loggers_report_every_step_and_a_record_at_each_logging_step(
        tmp_path: Path) -> None:
    seen: list[ConsoleEvent] = []
    logger = RunLogger(tmp_path, enabled=True, total_steps=5, every_steps=2, jsonl=True,
                       tensorboard=False, device=torch.device("cpu"), console=seen.append)
    logger.note("training ...")
    logger.begin(0)
    for step in range(1, 6):
        logger(StepMetrics(step=step, loss=float(step), lr=1e-3, grad_norm=1.0, skipped=False,
                           seconds=0.5, data_wait_s=0.0, samples=2, tokens=64))
    logger.saved(5)
    logger.close()
    assert seen[:2] == [Note("training ..."), Started(0, 5)]
    steps = [e for e in seen if isinstance(e, StepDone)]
    assert [(e.step, e.loss, e.samples_per_s) for e in steps] == [
        (s, float(s), 4.0) for s in range(1, 6)]
    assert [e.step for e in steps if e.record is not None] == [2, 4, 5]  # and the last step
    assert steps[1].record is not None and steps[1].record["loss"] == 1.5  # mean of 1 and 2
    assert seen[-1] == Note(f"checkpoint saved at step 5: "
                            f"{tmp_path / 'checkpoints' / 'step_000000005'}")
    silent: list[ConsoleEvent] = []
    other_rank = RunLogger(tmp_path, enabled=False, total_steps=5, every_steps=2, jsonl=False,
                           tensorboard=False, device=torch.device("cpu"), console=silent.append)
    other_rank.begin(0)
    other_rank.note("x")
    assert silent == []


def test_a_launched_rank_writes_one_protocol_line_per_event(tmp_path: Path) -> None:
    path = tmp_path / "stdout.log"
    with path.open("w") as stream:
        write = EventWriter(stream)
        for event in EVERY_EVENT[:4]:
            write(event)
        assert path.read_text().count("\n") == 4  # flushed at once: the launcher follows it
    assert [decode_event(line) for line in path.read_text().splitlines()] == EVERY_EVENT[:4]


# --- following rank 0's output files -----------------------------------------------------------


def wait_until(predicate, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_rank_output_is_decoded_as_the_files_grow_and_drained_at_close(tmp_path: Path) -> None:
    seen: list[ConsoleEvent] = []
    lock = threading.Lock()

    def console(event: ConsoleEvent) -> None:
        with lock:
            seen.append(event)

    output = RankOutput(console, poll_s=0.01)
    stdout, stderr = tmp_path / "0" / "stdout.log", tmp_path / "0" / "stderr.log"
    output.follow(stdout, stderr)  # before the launcher creates them
    stdout.parent.mkdir()
    with stdout.open("w") as out, stderr.open("w") as err:
        out.write(encode_event(Started(0, 6)) + "\n" + "a line of its own\n")
        out.flush()
        wait_until(lambda: len(seen) == 2)
        assert seen == [Started(0, 6), Output("a line of its own")]
        out.write(encode_event(StepDone(1, 6, 0.5, 2.0))[:20])  # half a line: not yet
        out.flush()
        err.write("UserWarning: careful\n")
        err.flush()
        wait_until(lambda: len(seen) == 3)
        out.write(encode_event(StepDone(1, 6, 0.5, 2.0))[20:] + "\n")
        out.write("unended last words")
        out.flush()
        wait_until(lambda: len(seen) == 4)
    output.close()
    assert seen[2:] == [Output("UserWarning: careful", err=True), StepDone(1, 6, 0.5, 2.0),
                        Output("unended last words")]


def test_rank_output_without_files_closes_at_once() -> None:
    output = RankOutput(lambda event: None)
    output.close()  # the launcher failed before it started any rank
