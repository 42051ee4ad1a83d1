"""Developer sessions: `nox -s tests` is the README's test command and what CI runs."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

# An exact pin: pip takes the local CPU wheel; a range would pull a multi-GB CUDA build.
TORCH = "torch==2.13.0"
PLUGINS = ["edge", "blur", "depth", "seg", "keypoint", "upscale"]
# plot and tensorboard: optional for users, but their tests (inspect --plot, the TensorBoard
# logger, seg's colour check against matplotlib) run in every session.
PACKAGES = ["-e", ".[dev,plot,tensorboard]",
            *(arg for name in PLUGINS for arg in ("-e", f"plugins/{name}"))]
TEST_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "2",
}


def _install(session: nox.Session) -> None:
    session.install(TORCH)
    session.install(*PACKAGES)


@nox.session
def tests(session: nox.Session) -> None:
    """The default test run: CPU only, no slow tests (under 10 minutes on 2 cores)."""
    _install(session)
    session.run("pytest", "-m", "not slow and not gpu", *session.posargs, env=TEST_ENV)


@nox.session
def slow(session: nox.Session) -> None:
    """The slow CPU tests (multi-process runs, long end-to-end checks)."""
    _install(session)
    session.run("pytest", "-m", "slow and not gpu", *session.posargs, env=TEST_ENV)


@nox.session
def gpu(session: nox.Session) -> None:
    """Tests that need a CUDA device (with the fp8 extra: cuDNN's FP8 attention on Hopper)."""
    _install(session)
    session.install("-e", ".[fp8]")
    session.run("pytest", "-m", "gpu", *session.posargs, env=TEST_ENV)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "plugins", "bench", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over the package and the plugins."""
    _install(session)
    session.run("mypy")


@nox.session
def arch(session: nox.Session) -> None:
    """Dependency-direction and import-cost rules of the design."""
    _install(session)
    session.run("pytest", "tests/test_architecture.py", env=TEST_ENV)


@nox.session
def completions(session: nox.Session) -> None:
    """Regenerate completions/ctrlpost.{bash,zsh,fish}."""
    _install(session)
    for shell in ("bash", "zsh", "fish"):
        with open(f"completions/ctrlpost.{shell}", "w", encoding="utf-8") as out:
            session.run("ctrlpost", "completion", shell, stdout=out)
