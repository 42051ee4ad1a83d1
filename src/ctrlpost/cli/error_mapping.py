"""The one mapping from exceptions to what a command prints and its exit code."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from ctrlpost.errors import CtrlpostError, from_os_error

F = TypeVar("F", bound=Callable[..., Any])


def _render_error(exc: CtrlpostError) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    for line in exc.message.splitlines() or [""]:
        console.print(f"[bold red]error:[/] {escape(line)}")
    if exc.hint:
        console.print(f"[bold cyan]hint:[/] {escape(exc.hint)}")


def user_errors(fn: F) -> F:
    """Render :class:`CtrlpostError` as ``error: ...`` (+ ``hint: ...``) and exit with its code,
    and an :class:`OSError` (read-only or full disk, no permission) as one line with its fix.
    Anything else is an internal error: one line, exit 1. ``CTRLPOST_DEBUG=1`` re-raises."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except (CtrlpostError, OSError) as exc:
            if os.environ.get("CTRLPOST_DEBUG") == "1":
                raise
            error = from_os_error(exc, command=fn.__name__) if isinstance(exc, OSError) else exc
            _render_error(error)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except Exception as exc:
            if os.environ.get("CTRLPOST_DEBUG") == "1":
                raise
            internal = CtrlpostError(
                f"internal error: {type(exc).__name__}: {exc}",
                hint="rerun with CTRLPOST_DEBUG=1 for the traceback, and report it",
            )
            _render_error(internal)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]
