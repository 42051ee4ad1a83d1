"""The command line: :mod:`ctrlpost.cli.app` (the Typer commands), its completion callbacks and
one view module per command's terminal output."""

from __future__ import annotations

from ctrlpost.cli.app import app, completion_script, main

__all__ = ["app", "completion_script", "main"]
