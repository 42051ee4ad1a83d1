"""How ``ctrlpost --help`` reads: placeholders instead of type names, and registered names.

Typer shows every parameter's type (``<bool>`` on flags, ``<int range> [1<=x<=64]``, ``<path>``)
and a required argument as ``{recipe}``. :class:`PlainHelpCommand` and :class:`PlainHelpGroup`
show a placeholder instead (``RECIPE``, ``N``, ``GiB``: the ``metavar``, else the upper-cased
name), nothing after a flag, and leave ranges to the help text, which says them in words.
Paragraphs of a docstring are joined into lines, so the terminal wraps them, not the source.

An option's help may also hold ``{installed_data_sources}`` (or another registry lookup), which
is replaced by the registered names when the command parses its arguments (``--help``
included), so no name is written twice and nothing is read at import.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from ctrlpost.cli.completion import registered

_LOOKUP = re.compile(r"\{(installed_\w+)\}")
#: Said instead while completing: shells show option help, and a TAB should not load plugins.
_WHILE_COMPLETING = "one a plugin registers"


class _PlainArgument(TyperArgument):
    """An argument shown as its placeholder alone: ``RECIPE``, ``[NAME]``."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        name = self.metavar or _upper(self.name or "")
        return [name if self.required else f"[{name}]"]

    def _get_number_range_help_str(self) -> str | None:
        return None  # the help text says the range in words; the type still enforces it


class _PlainOption(TyperOption):
    """An option shown with its placeholder (``--nproc N``), a flag with none (``--json``)."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None if self.is_flag else self.metavar

    def _get_number_range_help_str(self) -> str | None:
        return None  # the help text says the range in words; the type still enforces it


def plain(params: list[Any], ctx: Any) -> list[Any]:
    """``params`` shown the plain way (see the module docstring); registry lookups filled in."""
    for param in params:
        if isinstance(param, TyperOption):
            param.__class__ = _PlainOption  # display only: parsing and checks stay Typer's
            if not param.is_flag:
                param.metavar = param.metavar or _upper(max(param.opts, key=len))
        elif isinstance(param, TyperArgument):
            param.__class__ = _PlainArgument
            param.metavar = param.metavar or _upper(param.name or "")
        template: str | None = param.__dict__.setdefault("_help_template", param.help)
        if template and _LOOKUP.search(template):
            param.help = _LOOKUP.sub(
                lambda m: _names(m.group(1), completing=ctx.resilient_parsing), template)
    return params


def joined_paragraphs(text: str | None) -> str | None:
    """``text`` with each paragraph on one line: Typer keeps a docstring's line breaks."""
    if text is None:
        return None
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


class PlainHelpCommand(TyperCommand):
    """A command whose help reads the plain way (see the module docstring)."""

    def __init__(self, name: str | None, **attrs: Any) -> None:
        attrs["help"] = joined_paragraphs(attrs.get("help"))
        super().__init__(name, **attrs)

    def get_params(self, ctx: Any) -> list[Any]:  # Typer's own (vendored) click types
        return plain(super().get_params(ctx), ctx)


class PlainHelpGroup(TyperGroup):
    """The root command: plain help, and bare ``ctrlpost`` prints it and exits 0 (Typer's
    ``no_args_is_help`` exits 2, as for a usage error)."""

    def __init__(self, **attrs: Any) -> None:
        attrs["help"] = joined_paragraphs(attrs.get("help"))
        super().__init__(**attrs)

    def get_params(self, ctx: Any) -> list[Any]:
        return plain(super().get_params(ctx), ctx)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args and not ctx.resilient_parsing:
            typer.echo(ctx.get_help(), color=ctx.color)
            raise typer.Exit(0)
        return super().parse_args(ctx, args)


def _upper(name: str) -> str:
    return name.lstrip("-").replace("-", "_").upper()


def _names(lookup: str, *, completing: bool) -> str:
    if completing:
        return _WHILE_COMPLETING
    return ", ".join(registered(lookup)) or "none is installed"
