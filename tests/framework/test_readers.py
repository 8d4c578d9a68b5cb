"""Streaming readers: every format gives the same rows, CSV quoting/encodings/missing values are
right, bad input is one line naming file, column and row, and a directory's schema drift is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from framework.dataset import describe_data, load_dataset, scan_data, spill_shards
from framework.errors import JobSpecError
from framework.jobspec import DataSpec
from framework.readers import ReadError, count_rows, open_table, rebatch, to_float64

ROWS = 257


@pytest.fixture()
def table() -> pa.Table:
    rng = np.random.default_rng(7)
    a = rng.normal(size=ROWS)
    a[[3, 100]] = np.nan
    return pa.table({"id": [f"row-{i}" for i in range(ROWS)], "a": a, "b": rng.integers(-5, 5, ROWS),
                     "c": rng.random(ROWS) > 0.5, "y": rng.integers(0, 3, ROWS)})


def write(table: pa.Table, path: Path) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=50)
    elif path.suffix == ".feather":
        feather.write_feather(table, path, chunksize=60)
    else:
        pa_csv.write_csv(table, path)
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".feather", ".csv"])
def test_every_format_streams_the_same_rows(tmp_path: Path, table: pa.Table, suffix: str) -> None:
    reader = open_table(write(table, tmp_path / f"d{suffix}"))
    assert reader.schema.names == ["id", "a", "b", "c", "y"]
    assert count_rows(reader) == ROWS
    columns = ["b", "a"] if suffix == ".csv" else ["b", "a", "c"]  # a CSV's true/false is text, not a number
    types = {name: pa.float64() for name in columns} if suffix == ".csv" else None
    shards = list(rebatch(reader.iter_batches(columns, rows=33, types=types), 100))
    assert [t.num_rows for t in shards] == [100, 100, 57]
    got = np.concatenate([to_float64(t, columns) for t in shards])
    expected = np.column_stack([table["b"].to_numpy(), table["a"].to_numpy(zero_copy_only=False),
                                table["c"].to_numpy(zero_copy_only=False).astype(float)])[:, :len(columns)]
    np.testing.assert_array_equal(got, expected)  # NaN where a was missing, booleans 0/1


def test_quoted_csv_fields_and_missing_values(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text('id,"x, first",x2,note,y\n'
                    '"a,1",1.5,NA,"said ""hi"", left",0\n'
                    '"b",,2,"",1\n'
                    'c,"3",null,plain,1\n', encoding="utf-8")
    data = load_dataset(DataSpec(path=path, features=("x, first", "x2"), label="y"))
    np.testing.assert_array_equal(data.features, [[1.5, np.nan], [np.nan, 2.0], [3.0, np.nan]])
    np.testing.assert_array_equal(data.labels, [0, 1, 1])


def test_csv_in_another_encoding_and_delimiter(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("prix;quantité;étiquette\n1,5;2;été\n3;4;hiver\n".replace("1,5", "1.5").encode("latin-1"))
    data = load_dataset(DataSpec(path=path, label="étiquette", delimiter=";", encoding="latin-1"))
    assert data.feature_names == ("prix", "quantité")
    np.testing.assert_array_equal(data.features, [[1.5, 2], [3, 4]])
    assert list(data.labels) == ["été", "hiver"]  # type: ignore[arg-type]


def test_a_bad_value_far_into_a_csv_is_named_by_row(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text("a,b\n" + "1,2\n" * 300_000 + "1,oops\n")  # several pyarrow blocks before it
    spec = DataSpec(path=path)
    info = describe_data(spec)  # the sample does not reach it
    assert not info.complete and info.rows is None
    with pytest.raises(JobSpecError, match=r"long\.csv: column 'b', data row 300001: 'oops' is not a number$"):
        scan_data(spec, info.feature_names)


@pytest.mark.parametrize("suffix", [".parquet", ".feather"])
def test_a_text_feature_column_is_refused_before_anything(tmp_path: Path, table: pa.Table, suffix: str) -> None:
    path = write(table, tmp_path / f"d{suffix}")
    with pytest.raises(JobSpecError, match=rf"d\{suffix}: column 'id' is string, expected numbers \(feature columns "
                                           r"must be numeric; name the ones to use in \[data\] features\)$"):
        describe_data(DataSpec(path=path, label="y"))
    info = describe_data(DataSpec(path=path, label="y", features=("a", "b", "c")))
    assert info.complete and info.rows == ROWS and info.sample.features.shape == (ROWS, 3)


def test_missing_columns_are_named(tmp_path: Path, table: pa.Table) -> None:
    path = write(table, tmp_path / "d.parquet")
    with pytest.raises(JobSpecError,
                       match=r"d\.parquet: label column 'label' is not in its columns \(id, a, b, c, y\)"):
        describe_data(DataSpec(path=path, label="label"))
    with pytest.raises(JobSpecError, match=r"d\.parquet: feature column 'z' is not in its columns"):
        describe_data(DataSpec(path=path, features=("a", "z")))


def test_not_a_parquet_file(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ReadError, match=r"d\.parquet: not a readable Parquet file"):
        open_table(path)


def test_directory_is_one_table_and_drift_is_named(tmp_path: Path, table: pa.Table) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    write(table.slice(0, 100), parts / "part-0.parquet")
    write(table.slice(100), parts / "part-1.parquet")
    assert count_rows(open_table(parts)) == ROWS
    data = load_dataset(DataSpec(path=parts, features=("a", "b"), label="y"))
    np.testing.assert_array_equal(data.labels, table["y"].to_numpy())
    write(table.slice(0, 5).set_column(1, "a", pa.array(["x"] * 5)), parts / "part-2.parquet")
    with pytest.raises(ReadError, match=r"part-2\.parquet: column 'a' is string, part-0\.parquet has double$"):
        open_table(parts)
    write(table.slice(0, 5).drop_columns(["b"]), parts / "part-2.parquet")
    with pytest.raises(ReadError, match=r"part-2\.parquet: has no column 'b', unlike part-0\.parquet"):
        open_table(parts)


def test_spilled_shards_are_the_rows_and_labels_the_column(tmp_path: Path, table: pa.Table) -> None:
    path = write(table, tmp_path / "d.parquet")
    spec = DataSpec(path=path, features=("a", "b"), label="y", rows_per_shard=40)
    data = spill_shards(spec, ("a", "b"), tmp_path / "shards")
    assert [s.rows for s in data.shards] == [40] * 6 + [17]
    rows = np.concatenate([np.load(s.path) for s in data.shards if s.path is not None])
    np.testing.assert_array_equal(rows, np.column_stack([table["a"].to_numpy(zero_copy_only=False),
                                                         table["b"].to_numpy().astype(float)]))
    labels = data.labels()
    assert labels is not None and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, table["y"].to_numpy())
    assert [(p.column, p.first_nan, p.first_inf) for p in data.non_finite] == [("a", 3, None)]
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == (
        [f"data-{i:05d}.npy" for i in range(7)] + ["data-labels.npy"])  # no partial files left


@pytest.mark.parametrize("suffix", [".parquet", ".feather", ".csv", ".npy", "dir"])
@pytest.mark.parametrize("start", [0, 49, 50, 130, 256, 257, 300])
def test_reading_from_a_row_on(tmp_path: Path, table: pa.Table, suffix: str, start: int) -> None:
    """``start`` skips rows (Parquet row groups and Arrow batches before it are not read)."""
    numbers = table.select(["a", "b"])
    if suffix == "dir":
        path = tmp_path / "parts"
        path.mkdir()
        write(numbers.slice(0, 100), path / "p0.parquet")
        write(numbers.slice(100), path / "p1.parquet")
        columns = ["a", "b"]
    elif suffix == ".npy":
        path = tmp_path / "d.npy"
        np.save(path, np.column_stack([numbers["a"].to_numpy(zero_copy_only=False), numbers["b"].to_numpy()]))
        columns = ["x0", "x1"]
    else:
        path = write(numbers, tmp_path / f"d{suffix}")
        columns = ["a", "b"]
    types = {c: pa.float64() for c in columns}
    batches = list(open_table(path).iter_batches(columns, rows=33, types=types, start=start))
    got = np.concatenate([to_float64(b, columns) for b in batches]) if batches else np.empty((0, 2))
    expected = np.column_stack([numbers["a"].to_numpy(zero_copy_only=False), numbers["b"].to_numpy()])[start:]
    np.testing.assert_array_equal(got, expected)
    assert all(b.num_rows <= 33 for b in batches)
