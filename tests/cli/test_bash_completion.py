"""The shipped bash script (completions/ctrlpost.bash) in a real interactive bash on a
pseudo-terminal: what a TAB inserts, and whether bash adds a space after it."""

from __future__ import annotations

import os
import pty
import re
import select
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Typed after each line: `echo @@$((1+1))` prints @@2, which the typed line itself does not hold.
DONE = "; echo @@$((1+1))\n"


class InteractiveBash:
    """``bash -i`` on a pseudo-terminal, its prompt ``$ ``, nothing read from rc files."""

    def __init__(self, cwd: Path, path: str) -> None:
        self.home = cwd
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes bash
            os.chdir(cwd)
            env = {"PATH": path, "HOME": str(cwd), "TERM": "dumb", "PS1": "$ ",
                   "INPUTRC": "/dev/null"}
            os.execve("/bin/bash", ["bash", "--norc", "--noprofile", "-i"], env)

    def type(self, keys: str) -> str:
        """Type ``keys``, then wait for the line's ``@@2``; what the terminal showed."""
        os.write(self.fd, keys.encode())
        shown, deadline = b"", time.monotonic() + 60
        while b"@@2\r\n" not in shown:
            assert time.monotonic() < deadline, shown.decode(errors="replace")
            if select.select([self.fd], [], [], 0.1)[0]:
                shown += os.read(self.fd, 4096)
        return shown.decode(errors="replace")

    def close(self) -> None:
        os.write(self.fd, b"exit\n")
        os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture(scope="module")
def bash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InteractiveBash]:
    work = tmp_path_factory.mktemp("work")
    (work / "sub").mkdir()
    (work / "aa.toml").write_text("")
    (work / "ab.txt").write_text("")
    bin_dir = tmp_path_factory.mktemp("bin")  # `ctrlpost` is this checkout's, whatever PATH has
    (bin_dir / "ctrlpost").write_text(f'#!/bin/sh\nexec {sys.executable} -m ctrlpost "$@"\n')
    (bin_dir / "ctrlpost").chmod(0o755)
    shell = InteractiveBash(work, f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    script = Path(__file__).resolve().parents[2] / "completions" / "ctrlpost.bash"
    shell.type(f"bind 'set bell-style none'; source {script}{DONE}")
    yield shell
    shell.close()


def words_after_tab(bash: InteractiveBash, line: str) -> list[str]:
    """The words of ``line`` after a TAB at its end and then an X: ``[..., "sub/X"]`` when
    bash added no space after the completion, ``[..., "aa.toml", "X"]`` when it did."""
    # TAB, X, then go to the start (^A), print each word in brackets, and go to the end (^E).
    shown = bash.type(f"{line}\tX\x01printf '[%s]\\n' \x05{DONE}")
    return re.findall(r"^\[(.*)\]\r$", shown, re.M)


CASES = {
    # A folder: no space, so the path goes on.
    "ctrlpost verify s": ["ctrlpost", "verify", "sub/X"],
    "ctrlpost fetch-weights aa.toml --dir s": ["ctrlpost", "fetch-weights", "aa.toml", "--dir",
                                                "sub/X"],
    # A recipe: the .toml file, then a space; other files are not offered, even when nothing is.
    "ctrlpost verify a": ["ctrlpost", "verify", "aa.toml", "X"],
    "ctrlpost verify ab": ["ctrlpost", "verify", "abX"],
    # A --set key: no space after its `=`; a value: a space after it; several: what they share.
    "ctrlpost train aa.toml --set parallel.activation_ch": [
        "ctrlpost", "train", "aa.toml", "--set", "parallel.activation_checkpointing=X"],
    "ctrlpost train aa.toml --set parallel.activation_checkpointing=se": [
        "ctrlpost", "train", "aa.toml", "--set", "parallel.activation_checkpointing=selective",
        "X"],
    "ctrlpost train aa.toml --set data.embed.b": [
        "ctrlpost", "train", "aa.toml", "--set", "data.embed.batch_X"],
    # A TOML string: quoted for bash, so ctrlpost receives "480" and reads the text 480.
    'ctrlpost train aa.toml --set data.resolution=\\"4': [
        "ctrlpost", "train", "aa.toml", "--set", 'data.resolution="480"', "X"],
    "ctrlpost train aa.toml --set data.resolution=": [
        "ctrlpost", "train", "aa.toml", "--set", 'data.resolution="X'],
}


@pytest.mark.parametrize("line", list(CASES))
def test_a_tab_inserts(bash: InteractiveBash, line: str) -> None:
    assert words_after_tab(bash, line) == CASES[line]


def test_a_leading_tilde_stays_the_home_folder(bash: InteractiveBash) -> None:
    assert words_after_tab(bash, "ctrlpost verify ~/s") == [
        "ctrlpost", "verify", f"{bash.home}/sub/X"]
