"""Loading a hint pickle (seg, keypoint) without running code from it (part of the plugin API).

Unpickling can call any importable function the file names (``os.system`` among them), and a
dataset's files come from elsewhere. This unpickler resolves only the globals the format can
need: numpy arrays, dtypes and scalars (under their numpy 1.x and 2.x module names), and the
builtin types that pickle protocols 0-2 spell as globals. Any other global stops the load with a
:class:`~ctrlpost.modalities.HintFileError` that names it; the named module is never imported and
nothing is called.
"""

from __future__ import annotations

import io
import pickle
from functools import cache
from pathlib import Path
from typing import Any

from ctrlpost.modalities.hint_files import HintFileError

_LATIN1 = frozenset({"latin1", "latin-1", "iso-8859-1"})


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What protocols 0-2 call (as ``_codecs.encode``) to rebuild a ``bytes`` value."""
    if encoding.lower() not in _LATIN1:
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _from_value(kind: type) -> Any:
    """``kind`` (bytes or bytearray) built from a value, never from a size: ``bytes(10**12)``
    would be a tiny pickle that allocates a terabyte."""

    def build(*args: Any) -> Any:
        if args and isinstance(args[0], int):
            raise pickle.UnpicklingError(f"{kind.__name__}(<size>)")
        return kind(*args)

    return build


@cache
def _allowed() -> dict[tuple[str, str], Any]:
    import numpy as np

    try:  # numpy 2 (and the forwarding modules of numpy 1.26)
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - older numpy
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,
        ("collections", "OrderedDict"): dict,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer  # type: ignore[attr-defined]
    for builtins in ("builtins", "__builtin__"):
        allowed[(builtins, "set")], allowed[(builtins, "frozenset")] = set, frozenset
        allowed[(builtins, "bytes")] = _from_value(bytes)
        allowed[(builtins, "bytearray")] = _from_value(bytearray)
    return allowed


class _ForbiddenGlobal(pickle.UnpicklingError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _allowed()[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not supported")


def load_pickle(path: Path) -> Any:
    """The object pickled in ``path``, built from builtin values and numpy arrays only.

    Raises :class:`HintFileError` (a sentence without the path) when the file cannot be read,
    is not a complete pickle, or names any other global.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise HintFileError(f"cannot be read ({exc.strerror or exc})") from None
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except _ForbiddenGlobal as exc:
        raise HintFileError(
            f"is refused: it names the global {exc.name!r}, which a hint pickle never needs "
            "(only builtin values and numpy arrays are loaded; nothing was imported or run)"
        ) from None
    except Exception as exc:  # a damaged pickle raises almost anything
        raise HintFileError(f"is not a readable pickle ({type(exc).__name__}: {exc})") from None
