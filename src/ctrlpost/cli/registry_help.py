"""Help text that names what the plugin registries hold, filled in when a command runs.

An option's help may hold ``{installed_data_sources}`` (or another registry lookup); a command
made with ``cls=RegistryHelp`` replaces it with the registered names when it parses its
arguments (``--help`` included), so no name is written twice and nothing is read at import.
"""

from __future__ import annotations

import re
from typing import Any

from typer.core import TyperCommand

from ctrlpost.cli.completion import registered

_LOOKUP = re.compile(r"\{(installed_\w+)\}")
#: Said instead while completing: shells show option help, and a TAB should not load plugins.
_WHILE_COMPLETING = "one a plugin registers"


class RegistryHelp(TyperCommand):
    """A Typer command whose option help lists registered names (see the module docstring)."""

    def get_params(self, ctx: Any) -> list[Any]:  # Typer's own (vendored) click types
        params: list[Any] = super().get_params(ctx)
        templates: dict[str, str | None] = self.__dict__.setdefault("_help_templates", {})
        for param in params:
            template = templates.setdefault(param.name or "", getattr(param, "help", None))
            if template and _LOOKUP.search(template):
                param.help = _LOOKUP.sub(
                    lambda m: _names(m.group(1), completing=ctx.resilient_parsing), template)
        return params


def _names(lookup: str, *, completing: bool) -> str:
    if completing:
        return _WHILE_COMPLETING
    return ", ".join(registered(lookup)) or "none is installed"
