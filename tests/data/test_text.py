"""Embedding pickles: the reference format, the safe reader, atomic writes, padding."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from ctrlpost.data import text
from ctrlpost.errors import DataError

from .conftest import embedding, write_pickle


def test_round_trip_in_the_reference_format(tmp_path: Path) -> None:
    emb = embedding(7, 1024)
    path = text.embedding_path(tmp_path, "clip")
    text.write_embedding(path, emb.astype(np.float32))
    assert path == tmp_path / "t5_xxl" / "clip.pickle"
    raw = pickle.loads(path.read_bytes())  # what the reference's plain pickle.load sees
    assert isinstance(raw, list) and len(raw) == 1
    assert raw[0].dtype == np.float16 and raw[0].shape == (7, 1024)
    np.testing.assert_array_equal(text.read_embedding(path, dim=1024), emb)
    assert [p.name for p in path.parent.iterdir()] == ["clip.pickle"]  # no temp file left


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_reads_every_pickle_protocol(tmp_path: Path, protocol: int) -> None:
    emb = embedding(3, 8)
    path = tmp_path / "e.pickle"
    path.write_bytes(pickle.dumps([emb], protocol=protocol))
    np.testing.assert_array_equal(text.read_embedding(path), emb)


def test_reads_numpy1_pickles(tmp_path: Path) -> None:
    # numpy 1.x names numpy.core.multiarray._reconstruct; files made by the reference do too.
    payload = pickle.dumps([embedding(2, 4)], protocol=2).replace(b"numpy._core", b"numpy.core")
    assert b"numpy.core.multiarray" in payload
    path = tmp_path / "old.pickle"
    path.write_bytes(payload)
    assert text.read_embedding(path).shape == (2, 4)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_code_running_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write_pickle(tmp_path / "evil.pickle", [_RunsCode(marker)])
    with pytest.raises(DataError) as info:
        text.read_embedding(path)
    assert str(path) in info.value.message and "refused global" in info.value.message
    assert not marker.exists()


@pytest.mark.parametrize(
    ("obj", "dim", "expected"),
    [
        ({"a": 1}, None, "expected a list holding one numpy array"),
        ([np.zeros((4, 8), np.float16)] * 2, None, "expected a list holding one numpy array"),
        ([np.zeros((4,), np.float16)], None, "expected a 2-D float16 array"),
        ([np.zeros((4, 8), np.int32)], None, "expected a 2-D float16 array"),
        ([np.zeros((0, 8), np.float16)], None, "0 tokens"),
        ([np.zeros((513, 8), np.float16)], None, "513 tokens"),
        ([np.zeros((4, 8), np.float16)], 16, "width 8, the model expects 16"),
        ([np.full((4, 8), np.nan, np.float16)], None, "NaN or Inf"),
    ],
)
def test_malformed_embeddings_name_the_file(tmp_path: Path, obj: object, dim: int | None,
                                             expected: str) -> None:
    path = write_pickle(tmp_path / "bad.pickle", obj)
    with pytest.raises(DataError) as info:
        text.read_embedding(path, dim=dim)
    assert info.value.message.startswith(f"{path}: ") and expected in info.value.message


def test_garbage_and_missing_files(tmp_path: Path) -> None:
    garbage = tmp_path / "g.pickle"
    garbage.write_bytes(b"\x00not a pickle")
    with pytest.raises(DataError, match="not a safe T5 embedding pickle"):
        text.read_embedding(garbage)
    with pytest.raises(DataError, match="cannot read"):
        text.read_embedding(tmp_path / "missing.pickle")


def test_pad_embedding_zero_pads_to_512() -> None:
    emb = embedding(5, 4)
    padded = text.pad_embedding(emb)
    assert padded.shape == (512, 4) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:5], emb.astype(np.float32))
    assert not padded[5:].any()
