"""Shell-completion callbacks of the CLI: cheap, no torch (they run on every TAB).

Names of modalities, data sources and flavors come from the plugin registries, never from a list
here: a plugin's addition is offered as soon as it is installed.
"""

from __future__ import annotations

import re
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


def registered(lookup: str) -> list[str]:
    """The names the registry's ``lookup`` (``installed_flavors``...) returns; none when a plugin
    is broken (the command itself then says why)."""
    from ctrlpost.modalities import registry

    try:
        return list(getattr(registry, lookup)())
    except CtrlpostError:
        return []


def complete_modality(incomplete: str) -> Iterator[str]:
    """Names of installed modality plugins."""
    yield from (name for name in registered("installed_modalities") if name.startswith(incomplete))


def complete_flavor(incomplete: str) -> Iterator[str]:
    """Names of registered model flavors."""
    yield from (name for name in registered("installed_flavors") if name.startswith(incomplete))


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
    """Names of registered `fetch-data` sources."""
    names = registered("installed_data_sources")
    yield from (name for name in names if name.startswith(incomplete))


def complete_embed_device(incomplete: str) -> Iterator[str]:
    yield from (name for name in EMBED_DEVICES if name.startswith(incomplete))


def complete_embed_precision(incomplete: str) -> Iterator[str]:
    yield from (name for name in ("fp16", "bf16") if name.startswith(incomplete))


def complete_control_modality(incomplete: str) -> Iterator[str]:
    """Modalities with a released control branch in some registered flavor's hub release."""
    from ctrlpost.modalities import registry
    from ctrlpost.weights.catalog import released_controls

    try:
        names = {name for flavor in registry.installed_flavors().values() if flavor.release
                 for name in released_controls(flavor.release.repo_id)}
    except CtrlpostError:
        return
    yield from (name for name in sorted(names) if name.startswith(incomplete))


#: ``--set`` keys whose values are registered names, and the callback that offers them.
_REGISTERED_KEYS = {"data.source": complete_data_source, "model.flavor": complete_flavor,
                    "control.0.modality": complete_modality}
_CONTROL_MODALITY = re.compile(r"control\.\d+\.modality")


def complete_override(incomplete: str) -> Iterator[str]:
    """``--set KEY=VALUE`` for the keys whose values are registered names: ``mo`` offers
    ``model.flavor=7b`` and ``model.flavor=tiny``, ``data.source=s`` ``data.source=synthetic``."""
    typed_key, equals, typed_value = incomplete.partition("=")
    for key, callback in _REGISTERED_KEYS.items():
        if equals and callback is complete_modality and _CONTROL_MODALITY.fullmatch(typed_key):
            key = typed_key  # any control.N
        if key == typed_key if equals else key.startswith(typed_key):
            yield from (f"{key}={name}" for name in callback(typed_value))
