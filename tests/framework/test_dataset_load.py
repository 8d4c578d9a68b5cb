"""Loading data: what is read as what, and bad files named by file, line or byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from framework.dataset import load_dataset
from framework.errors import JobSpecError
from framework.jobspec import DataSpec


def load(path: Path, text: str | bytes, label: str | None = "y") -> np.ndarray:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return load_dataset(DataSpec(path=path, label=label)).features


def test_empty_fields_are_missing_values(tmp_path: Path) -> None:
    features = load(tmp_path / "d.csv", "a,b,y\n1,,0\n, 2.5 ,1\nnan,inf,1\n")
    np.testing.assert_array_equal(features, [[1, np.nan], [np.nan, 2.5], [np.nan, np.inf]])


def test_byte_order_mark_and_crlf_line_ends(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbfa,b,y\r\n1,2,0\r\n3,4,1\r\n")
    data = load_dataset(DataSpec(path=path, label="y"))
    assert data.feature_names == ("a", "b")
    np.testing.assert_array_equal(data.features, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(data.labels, [0, 1])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"a,b,y\n1,2,0\n1,2,\xff0\n", r"d\.csv: not UTF-8 text: byte 0xff at offset 16 \(line 3\) invalid start byte"),
        ("a,b,y\n1,2,0\n\n1,2\n", r"d\.csv: line 4 has 2 fields, the header has 3$"),
        ("a,b,y\n1,2,0,9\n", r"d\.csv: line 2 has 4 fields, the header has 3$"),
        ("", r"d\.csv: empty CSV, expected a header line"),
        ("a,b,y\n", r"d\.csv: no data rows after the header"),
        ("a,b,y\n1,x,0\n", r"d\.csv: column 'b', data row 1: 'x' is not a number"),
        ("a,b,z\n1,2,0\n", r"d\.csv: label column 'y' is not in the header \['a', 'b', 'z'\]"),
    ],
    ids=["not-utf8", "short-row", "long-row", "empty", "header-only", "not-a-number", "no-label"],
)
def test_bad_csv(tmp_path: Path, text: str | bytes, message: str) -> None:
    with pytest.raises(JobSpecError, match=message):
        load(tmp_path / "d.csv", text)


def test_bad_npy(tmp_path: Path) -> None:
    with pytest.raises(JobSpecError, match=r"d\.npy: empty file, expected a \.npy array"):
        load(tmp_path / "d.npy", b"", label=None)
    with pytest.raises(JobSpecError, match=r"d\.npy: not a \.npy file \(it does not start with the NUMPY magic"):
        load(tmp_path / "d.npy", b"a,b\n1,2\n", label=None)
    np.save(tmp_path / "s.npy", np.array([["a", "b"]]))
    with pytest.raises(JobSpecError, match=r"s\.npy: expected a numeric array, got dtype <U1"):
        load_dataset(DataSpec(path=tmp_path / "s.npy"))
    np.save(tmp_path / "ok.npy", np.array([[1, 2], [3, 4]], dtype=np.int32))
    np.testing.assert_array_equal(load_dataset(DataSpec(path=tmp_path / "ok.npy")).features, [[1, 2], [3, 4]])


def test_text_columns_come_with_the_features_in_one_read(tmp_path: Path) -> None:
    missing = tmp_path / "d.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0], "review": ["fine", None], "y": [0, 1]}), missing)
    with pytest.raises(JobSpecError, match=r"d\.parquet: text column 'review', data row 2: missing text"):
        load_dataset(DataSpec(path=missing, label="y", text=("review",)))
    path = tmp_path / "d.csv"
    path.write_text('a,review,y\n1,"good, really",0\n2,é,1\n', encoding="utf-8")
    data = load_dataset(DataSpec(path=path, label="y", text=("review",)))
    assert data.feature_names == ("a",)
    offsets, utf8 = data.texts["review"]
    assert [bytes(utf8[offsets[i]:offsets[i + 1]]).decode() for i in range(2)] == ["good, really", "é"]
    np.testing.assert_array_equal(data.labels, [0, 1])
