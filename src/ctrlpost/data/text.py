"""T5 embedding files: the reference's pickle format, read safely and written atomically.

Format (what Cosmos-Transfer1's T5 script writes and its loader reads): ``t5_xxl/<stem>.pickle``
holds ``pickle`` of a one-element list ``[np.ndarray float16 [L, D]]`` where ``L`` counts the real
tokens including EOS (at most 512; padding already trimmed) and ``D`` is the T5 hidden size
(1024 for T5-11B).

A pickle can run any code when loaded, and these files come from other people's datasets, so
they are read with :class:`EmbeddingUnpickler`, which admits only the few numpy callables an
ndarray pickle references (checked for protocols 0-5 and for pickles written by numpy 1.x,
which name ``numpy.core`` instead of ``numpy._core``). Nothing else is ever imported or called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ctrlpost.data.layout import EMBEDDINGS, DatasetLayout
from ctrlpost.errors import DataError
from ctrlpost.files import write_bytes_atomic

EMBED_DIR = EMBEDDINGS
"""Folder of the embeddings under the dataset root (the reference's name; see
:mod:`ctrlpost.data.layout`)."""

TEXT_TOKENS = 512
"""Tokens the DiT's cross-attention reads; shorter embeddings are zero-padded to this."""


def _numpy_callable(module: str, name: str) -> Any:
    """A numpy internal by its new (numpy 2) location, falling back to the numpy 1.x one."""
    import importlib

    for prefix in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{prefix}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {module}.{name}")


def _allowed() -> dict[tuple[str, str], Any]:
    import codecs

    reconstruct = _numpy_callable("multiarray", "_reconstruct")
    frombuffer = _numpy_callable("numeric", "_frombuffer")
    return {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # protocols 0-4: ndarray.__reduce__ -> _reconstruct(ndarray, (0,), b"b") + __setstate__
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        # protocol 5: out-of-band capable path
        ("numpy._core.numeric", "_frombuffer"): frombuffer,
        ("numpy.core.numeric", "_frombuffer"): frombuffer,
        # protocols 0-2 carry the raw bytes as a latin-1 str re-encoded by _codecs.encode
        ("_codecs", "encode"): codecs.encode,
    }


class EmbeddingUnpickler(pickle.Unpickler):
    """An unpickler that only builds numpy arrays (and plain lists/tuples/numbers/bytes).

    ``find_class`` is the only way a pickle can reach a callable, so refusing every global not
    in the allow-list means a malicious file fails before anything it names is imported or run.
    """

    _ALLOWED: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        allowed = type(self)._ALLOWED
        if allowed is None:
            allowed = type(self)._ALLOWED = _allowed()
        try:
            return allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name} (only numpy arrays are allowed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent id (only numpy arrays are allowed)")


def embedding_path(root: str | Path, stem: str) -> Path:
    """``<root>/t5_xxl/<stem>.pickle``."""
    return DatasetLayout(Path(root)).embedding(stem)


def read_embedding(path: str | Path, *, dim: int | None = None) -> np.ndarray:
    """The ``[L, D]`` float16/float32 array of an embedding pickle, loaded safely and checked.

    Raises :class:`DataError` naming the file when it cannot be read, would run code, or is not a
    one-element list holding a finite 2-D float array with ``1 <= L <= 512`` (and ``D == dim``
    when ``dim`` is given).
    """
    p = Path(path)
    try:
        payload = p.read_bytes()
    except OSError as exc:
        raise DataError(f"{p}: cannot read T5 embedding: {exc.strerror or exc}") from None
    try:
        obj = EmbeddingUnpickler(io.BytesIO(payload)).load()
    except Exception as exc:  # any malformed pickle: report it, never crash the caller
        raise DataError(f"{p}: not a safe T5 embedding pickle: {exc}",
                        hint="re-create it with `ctrlpost embed RECIPE`") from None
    return _checked(p, obj, dim)


def _checked(p: Path, obj: Any, dim: int | None) -> np.ndarray:
    hint = "re-create it with `ctrlpost embed RECIPE`"
    # The reference loader also accepts a bare array (it takes element 0 only of a list).
    array = obj[0] if isinstance(obj, list) and len(obj) == 1 else obj
    if not isinstance(array, np.ndarray):
        raise DataError(f"{p}: expected a list holding one numpy array, got "
                        f"{type(obj).__name__}", hint=hint)
    if array.dtype not in (np.float16, np.float32) or array.ndim != 2:
        raise DataError(f"{p}: expected a 2-D float16 array [L, D], got {array.dtype} "
                        f"{list(array.shape)}", hint=hint)
    length, width = array.shape
    if not 1 <= length <= TEXT_TOKENS:
        raise DataError(f"{p}: {length} tokens, expected 1..{TEXT_TOKENS}", hint=hint)
    if dim is not None and width != dim:
        raise DataError(f"{p}: embedding width {width}, the model expects {dim}", hint=hint)
    if not np.isfinite(array).all():
        raise DataError(f"{p}: embedding holds NaN or Inf values", hint=hint)
    return array


def write_embedding(path: str | Path, embedding_L_D: np.ndarray) -> None:
    """Write ``[embedding_L_D as float16]`` atomically (temp file in the same folder + rename)."""
    p = Path(path)
    array = np.ascontiguousarray(embedding_L_D, dtype=np.float16)
    if array.ndim != 2 or array.shape[0] < 1:
        raise ValueError(f"embedding must be [L>=1, D], got {list(array.shape)}")
    p.parent.mkdir(parents=True, exist_ok=True)
    # Protocol 4 is what the reference's writer (pickle.dump on Python 3.8+) produces.
    payload = pickle.dumps([array], protocol=4)
    write_bytes_atomic(p, payload)


def pad_embedding(embedding_L_D: np.ndarray, tokens: int = TEXT_TOKENS) -> np.ndarray:
    """float32 ``[tokens, D]``: the embedding followed by zero rows (the reference's padding)."""
    length, width = embedding_L_D.shape
    if length > tokens:
        raise ValueError(f"embedding has {length} tokens, more than {tokens}")
    out_N_D = np.zeros((tokens, width), dtype=np.float32)
    out_N_D[:length] = embedding_L_D
    return out_N_D
