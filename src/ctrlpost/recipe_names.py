"""Recipe values that name something a plugin registers, checked against the registry.

``DataSourceName`` (``[data].source``), ``FlavorName`` (``[model].flavor``) and
``BasePrecisionName`` (``[model].base_precision``) accept exactly the names the installed plugins
and ctrlpost's built-ins register; anything else is one line listing
them, with a "did you mean". Plugins load on the first check, never at import.
"""

from __future__ import annotations

import difflib
import functools
from typing import Annotated

from pydantic import AfterValidator

from ctrlpost.errors import CtrlpostError


def registered(name: str, lookup: str) -> str:
    """``name`` when the registry's ``lookup`` (``installed_flavors``...) has it; else a
    ValueError listing the registered names, as pydantic lists a Literal's."""
    from ctrlpost.modalities import registry

    try:
        choices = list(getattr(registry, lookup)())
    except CtrlpostError as exc:
        raise ValueError(exc.message + (f"; {exc.hint}" if exc.hint else "")) from None
    if name in choices:
        return name
    quoted = [repr(choice) for choice in choices] or ["a registered name (none is)"]
    listed = f"{', '.join(quoted[:-1])} or {quoted[-1]}" if len(quoted) > 1 else quoted[0]
    lowered = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1)
    guess = f"; did you mean {lowered[close[0]]!r}?" if close else ""
    raise ValueError(f"Input should be {listed} (got {name!r}){guess}")


DataSourceName = Annotated[
    str, AfterValidator(functools.partial(registered, lookup="installed_data_sources"))]
FlavorName = Annotated[
    str, AfterValidator(functools.partial(registered, lookup="installed_flavors"))]
BasePrecisionName = Annotated[
    str, AfterValidator(functools.partial(registered, lookup="installed_base_precisions"))]
