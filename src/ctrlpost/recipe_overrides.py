"""``--set KEY=VALUE`` and typed options, applied to a recipe's raw TOML table before validation.

A value is TOML (``10``, ``0.5``, ``true``, ``"text"``, ``[1, 2]``); a bare word is taken as a
string only when it could not mean anything else: letters, digits, ``_`` and ``-`` (``edge``,
``7b``, ``bf16``). Anything else that is not TOML (``"unterminated``, ``[oops``, a path) is an
error naming the key, so a typo never becomes a run folder called ``[oops``.
"""

from __future__ import annotations

import re
import sys
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_BARE_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


class OverrideError(ValueError):
    """A ``--set`` that cannot be applied; ``key`` is the dotted key (or ``--set``)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as TOML, or a bare word) to ``raw`` in place.

    Numeric path parts index arrays of tables: ``control.0.weight=0.5``.
    """
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise OverrideError("--set", f"{override!r} is not KEY=VALUE (e.g. train.steps=10)")
    set_key(raw, key.strip(), parse_value(key.strip(), text.strip()))


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` of ``raw`` to ``value`` in place (``control.0.weight``: numeric
    parts index arrays of tables)."""
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        node = _descend(node, part, ".".join(parts[: i + 1]))
    if isinstance(node, list):
        node[_index(node, parts[-1], key)] = value
    else:
        node[parts[-1]] = value


def _descend(node: Any, part: str, where: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, where)]
    if not isinstance(node, dict):
        raise ValueError(f"{where} is not a table")
    return node.setdefault(part, {})


def _index(node: list[Any], part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ValueError(f"{where}: {part!r} is not an index below {len(node)}")
    return int(part)


def parse_value(key: str, text: str) -> Any:
    """The TOML value of ``text``, or ``text`` itself when it is a bare word (see above)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if _BARE_WORD.fullmatch(text):
            return text
        raise OverrideError(key, f"{text!r} is not a TOML value; quote text, e.g. "
                                 f"--set '{key}=\"...\"'") from None
