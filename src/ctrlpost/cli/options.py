"""Turning typed command-line options into what the commands pass on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ctrlpost.errors import CtrlpostError


def given_values(options: Mapping[str, Any]) -> dict[str, Any]:
    """The typed options given on the command line, by the recipe key each one sets: passed to
    the recipe as values, never as TOML text."""
    return {key: value for key, value in options.items() if value is not None}


def stage_names(text: str | None, known: Mapping[str, Any]) -> list[str]:
    """The stages ``--stages a,b`` names, in the canonical order, with ``recipe`` always."""
    if text is None:
        return list(known)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise CtrlpostError(f"--stages: unknown stage(s) {', '.join(unknown) or '(none)'}",
                            hint=f"choose from: {', '.join(known)}")
    # Stages depend on the recipe; run it whether asked or not, in the canonical order.
    return [name for name in known if name in names or name == "recipe"]
