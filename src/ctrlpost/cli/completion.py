"""Shell-completion callbacks of the CLI: cheap, no torch (they run on every TAB)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ctrlpost.errors import CtrlpostError

SHELLS = ("bash", "zsh", "fish")
EMBED_DEVICES = ("auto", "cpu", "cuda")


def complete_recipe(incomplete: str) -> Iterator[str]:
    """``*.toml`` files and folders matching what has been typed."""
    base = Path(incomplete).parent if incomplete else Path(".")
    prefix = Path(incomplete).name if incomplete and not incomplete.endswith("/") else ""
    if incomplete.endswith("/"):
        base = Path(incomplete)
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(prefix) or entry.name.startswith("."):
            continue
        shown = str(entry) if str(base) != "." or incomplete.startswith("./") else entry.name
        if entry.is_dir():
            yield shown + "/"
        elif entry.suffix == ".toml":
            yield shown


def complete_modality(incomplete: str) -> Iterator[str]:
    """Names of installed modality plugins."""
    from ctrlpost.modalities import registry

    try:
        names = list(registry.installed_modalities())
    except CtrlpostError:
        return
    yield from (name for name in names if name.startswith(incomplete))


def complete_stages(incomplete: str) -> Iterator[str]:
    """Stage names of `verify`, after any already typed (``recipe,plu`` → ``recipe,plugins``)."""
    from ctrlpost.preflight import STAGES

    done, _, current = incomplete.rpartition(",")
    for stage in STAGES:
        if stage.startswith(current):
            yield f"{done},{stage}" if done else stage


def complete_shell(incomplete: str) -> Iterator[str]:
    yield from (shell for shell in SHELLS if shell.startswith(incomplete))


def complete_data_source(incomplete: str) -> Iterator[str]:
    yield from (name for name in ("hdvila", "local", "synthetic") if name.startswith(incomplete))


def complete_embed_device(incomplete: str) -> Iterator[str]:
    yield from (name for name in EMBED_DEVICES if name.startswith(incomplete))


def complete_embed_precision(incomplete: str) -> Iterator[str]:
    yield from (name for name in ("fp16", "bf16") if name.startswith(incomplete))


def complete_control_modality(incomplete: str) -> Iterator[str]:
    from ctrlpost.weights.catalog import CONTROL_FILES

    yield from (name for name in sorted(CONTROL_FILES) if name.startswith(incomplete))
