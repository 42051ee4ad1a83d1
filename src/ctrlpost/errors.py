"""Typed user-facing errors: one line plus an optional hint, rendered once by the CLI."""

from __future__ import annotations


class CtrlpostError(Exception):
    """An error the user can fix. ``exit_code`` 2 means bad input, 1 a failed run."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class RecipeError(CtrlpostError):
    """The recipe file is missing, unparsable or invalid."""


class PluginError(CtrlpostError):
    """A modality plugin is unknown, duplicated or rejects its parameters."""


class WeightsError(CtrlpostError):
    """A checkpoint is missing, has the wrong keys or shapes, or cannot be fetched."""


class DataError(CtrlpostError):
    """A dataset file is missing, unreadable or malformed."""


class LaunchError(CtrlpostError):
    """A training run failed after it started."""

    exit_code = 1
