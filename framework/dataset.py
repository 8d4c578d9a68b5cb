"""Input data: the rows a job scores, read from Parquet, Arrow IPC/Feather, CSV or ``.npy``
(:mod:`framework.readers`), never held whole.

* :func:`describe_data` reads the schema and a sample (what ``validate`` needs): the feature and
  label columns, their types (a non-numeric feature column is refused), the first rows.
* :func:`spill_shards` streams the chosen columns once and writes each shard of ``rows_per_shard``
  rows as its own ``.npy`` file (exact float64, no pickle; written to a temporary name, then
  renamed) in the job's work directory, which the artifact server hands to executors. It finds
  every NaN/inf on the way and keeps the label column in a ``.npy`` file of its own. The
  framework's memory is one shard and one read batch, whatever the data's size.
* :func:`load_dataset` reads a whole (small) table into memory: stacking's training rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from executor.textshard import encode_parts, npy_header, read_text_shard
from framework import atomic
from framework.errors import JobSpecError
from framework.jobspec import DataSpec
from framework.readers import (DEFAULT_BATCH_ROWS, CsvOptions, NpyReader, TableReader, is_numeric, open_table, rebatch,
                               sample, to_float64)

SAMPLE_ROWS = 10_000
"""Rows ``validate`` reads (checked for NaN/inf unless ``--scan`` reads them all)."""


@dataclass(frozen=True)
class Dataset:
    """Feature matrix (float64), their column names, the label column if any, and the text
    columns (``DataSpec.text``) whole, each as a text shard's two arrays (:func:`text_column`:
    offsets and UTF-8 bytes)."""

    features: np.ndarray
    feature_names: tuple[str, ...]
    labels: np.ndarray | None
    texts: Mapping[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of the features as ``.npy`` bytes, either a file of their own
    (``path``, as :func:`spill_shards` writes them) or a header and a view of an array in memory
    (``npy_parts``, as :func:`cut_shards` makes them); ``sha256`` is that of the bytes."""

    index: int
    start: int
    stop: int
    sha256: str
    npy_parts: tuple[bytes, memoryview] | None = None
    path: Path | None = None
    text: bool = False
    """A text shard (a file of UTF-8 bytes and offsets, see ``executor.textshard``)."""

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def array(self) -> np.ndarray:
        """The shard's rows (read from its file, or the view in memory; a text shard's as a 1-D
        object array of ``str``)."""
        if self.text and self.path is not None:
            return read_text_shard(self.path)
        if self.path is not None:
            return np.load(self.path, allow_pickle=False)
        assert self.npy_parts is not None
        return np.load(io.BytesIO(b"".join(bytes(p) for p in self.npy_parts)), allow_pickle=False)


@dataclass(frozen=True)
class DataInfo:
    """What the schema and a sample say of a data set (no more is read)."""

    path: Path
    format: str
    feature_names: tuple[str, ...]
    label: str | None
    rows: int | None
    """Rows, when known without reading them all (Parquet, Arrow, .npy); CSV: None."""
    sample: Dataset
    """The first rows (at most ``SAMPLE_ROWS``; all of them when ``complete``)."""
    complete: bool


def _numeric_labels(values: np.ndarray) -> np.ndarray:
    """Labels as numbers when every value is numeric (integers stay integers), else as strings."""
    try:
        as_float = values.astype(np.float64)
    except ValueError:
        return values.astype(str)
    if np.all(np.isfinite(as_float)) and np.all(as_float == np.round(as_float)):
        return as_float.astype(np.int64)
    return as_float


def open_data(spec: DataSpec) -> TableReader:
    """The reader of ``spec.path`` (a file or a directory of files), with the job's CSV options."""
    return open_table(spec.path, CsvOptions(delimiter=spec.delimiter, encoding=spec.encoding))


def is_text(kind: pa.DataType) -> bool:
    """A type a text member's column may have: strings (or all-null, refused row by row)."""
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind))


def _columns(spec: DataSpec, reader: TableReader) -> tuple[tuple[str, ...], dict[str, pa.DataType]]:
    """The feature columns (named, or every column but the label and the text members' columns)
    and the types to read them (and the text columns) as; a missing or non-numeric feature column,
    or a text column that is missing or does not hold strings, is refused naming it."""
    path, names = spec.path, reader.schema.names
    npy = reader.format == "npy"
    listing = (f"x0..x{len(names) - 1}" if npy else f"the header {names[:20]}" if reader.format == "csv"
               else f"its columns ({', '.join(names[:20])}{', ...' if len(names) > 20 else ''})")
    if spec.label is not None and spec.label not in names:
        raise JobSpecError(f"{path}: label {spec.label!r} must name a column {listing}" if npy
                           else f"{path}: label column {spec.label!r} is not in {listing}")
    for name in spec.text:
        if name not in names:
            raise JobSpecError(f"{path}: text column {name!r} (a model's text) is not in {listing}")
        kind = reader.schema.field(name).type
        if not is_text(kind):
            raise JobSpecError(f"{path}: text column {name!r} (a model's text) holds {kind}, expected text "
                               "(a string column)")
    features = spec.features or tuple(n for n in names if n != spec.label and n not in spec.text)
    for name in features:
        if name not in names:
            raise JobSpecError(f"{path}: feature {name!r} must name a column {listing}" if npy
                               else f"{path}: feature column {name!r} is not in {listing}")
    if not features and not spec.text:
        raise JobSpecError(f"{path}: no feature columns (only the label {spec.label!r})")
    types: dict[str, pa.DataType] = {name: pa.float64() for name in features}
    if reader.format != "csv":
        for name in features:
            kind = reader.schema.field(name).type
            if not is_numeric(kind):
                raise JobSpecError(f"{path}: column {name!r} is {kind}, expected numbers (feature columns must be "
                                   "numeric; name the ones to use in [data] features)")
    types.update({name: pa.string() for name in spec.text})
    if spec.label is not None and reader.format == "csv":
        types[spec.label] = pa.string()  # labels may be text; read as numbers later if they all are
    return tuple(features), types


def describe_data(spec: DataSpec, sample_rows: int = SAMPLE_ROWS) -> DataInfo:
    """The data's columns, types and first ``sample_rows`` rows; raise :class:`JobSpecError` naming
    the file and column on bad data (a sample reveals only the problems in its rows)."""
    reader = open_data(spec)
    features, types = _columns(spec, reader)
    if reader.format == "csv":
        _check_csv_inference(reader, features)
    columns = list(features) + list(spec.text) + ([spec.label] if spec.label is not None else [])
    taken = 0
    parts: list[Dataset] = []
    for table in rebatch(reader.iter_batches(columns, types=types), max(1, sample_rows)):
        for name in spec.text:  # a missing text in the sample is named now (run checks every row)
            check_no_missing_text(table.column(name), f"{spec.path}: text column {name!r}", 0)
        parts.append(_as_dataset(table, features, spec.label))
        taken += table.num_rows
        break
    if taken == 0:
        raise JobSpecError(f"{spec.path}: no data rows after the header" if reader.format == "csv"
                           else f"{spec.path}: no rows")
    rows = reader.num_rows
    complete = rows is not None and rows <= taken or (rows is None and taken < sample_rows)
    return DataInfo(spec.path, reader.format, features, spec.label, rows if rows is not None else
                    (taken if complete else None), parts[0], complete)


def _check_csv_inference(reader: TableReader, features: tuple[str, ...]) -> None:
    """A CSV feature column that pyarrow inferred as text from the first block holds a value that
    is not a number there: read that block as numbers, which names the row and the value."""
    schema = reader.schema
    for name in features:
        if not is_numeric(schema.field(name).type):
            for _block in reader.iter_batches([name], rows=1 << 30, types={name: pa.float64()}):
                break  # the first block (the one inferred from) converted after all: a null-like text


def _as_dataset(table: pa.Table, features: tuple[str, ...], label: str | None) -> Dataset:
    labels = _numeric_labels(_raw_labels(table.column(label))) if label is not None else None
    return Dataset(to_float64(table, features), features, labels)


def _raw_labels(column: pa.ChunkedArray) -> np.ndarray:
    """A label column as numpy: numbers when every value reads as one (a CSV's text labels are
    cast by Arrow, which is fast), else text; decided as a whole by :func:`_numeric_labels`."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        for kind in (pa.int64(), pa.float64()):
            try:
                return np.asarray(column.cast(kind).to_numpy())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
    values = column.to_numpy()
    return values.astype(str) if values.dtype.kind == "O" else values


def load_dataset(spec: DataSpec) -> Dataset:
    """The whole data set in memory, read once (for small tables: stacking's training rows,
    tests); its text columns too (a missing value refused naming its row)."""
    reader = open_data(spec)
    features, types = _columns(spec, reader)
    columns = list(features) + list(spec.text) + ([spec.label] if spec.label is not None else [])
    tables = list(reader.iter_batches(columns, types=types))
    if not tables or sum(t.num_rows for t in tables) == 0:
        raise JobSpecError(f"{spec.path}: no data rows after the header" if reader.format == "csv"
                           else f"{spec.path}: no rows")
    table = pa.Table.from_batches(tables)
    dataset = _as_dataset(table, features, spec.label)
    texts = {name: text_column(table.column(name), f"{spec.path}: text column {name!r}", 0) for name in spec.text}
    return dataclasses.replace(dataset, texts=texts)


@dataclass(frozen=True)
class NonFinite:
    """Where a feature column holds values that are not finite numbers (0-based data rows)."""

    column: str
    first_nan: int | None
    first_inf: int | None
    inf_value: float | None = None


def non_finite_columns(dataset: Dataset) -> list[NonFinite]:
    """The feature columns holding NaN or +-inf, each with its first such rows.

    One vectorised pass (a column sum, which any NaN or inf makes non-finite) finds the candidate
    columns; only those are scanned element by element."""
    features = dataset.features
    if features.size == 0:
        return []
    with np.errstate(over="ignore", invalid="ignore"):
        suspects = np.flatnonzero(~np.isfinite(features.sum(axis=0)))
    found = []
    for j in suspects:
        column = features[:, j]
        nan, inf = np.isnan(column), np.isinf(column)
        first_nan = int(np.argmax(nan)) if nan.any() else None
        first_inf = int(np.argmax(inf)) if inf.any() else None
        if first_nan is not None or first_inf is not None:  # else the sum merely overflowed
            found.append(NonFinite(dataset.feature_names[j], first_nan, first_inf,
                                   float(column[first_inf]) if first_inf is not None else None))
    return found


def write_shard(index: int, start: int, matrix: np.ndarray, directory: Path, kind: str = "data") -> Shard:
    """Write ``matrix`` (rows ``start``... of the data, float64) as ``<kind>-<index>.npy`` in
    ``directory`` and return its :class:`Shard` (see :func:`_write_parts`)."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float64)
    body = memoryview(matrix.reshape(-1).view(np.uint8).data) if matrix.size else memoryview(b"")
    return _write_parts(index, start, start + matrix.shape[0], [npy_header(matrix), body], directory, kind)


def write_text_shard(index: int, start: int, column: tuple[np.ndarray, np.ndarray], directory: Path,
                     kind: str) -> Shard:
    """Write a text column's rows ``start``... (``column``: offsets and UTF-8 bytes, as
    :func:`text_column` gives them) as the text shard ``<kind>-<index>.npy`` (two plain ``.npy``
    arrays, see ``executor.textshard``) and return its :class:`Shard`."""
    offsets, data = column
    return _write_parts(index, start, start + len(offsets) - 1, encode_parts(offsets, data), directory, kind,
                        text=True)


def _write_parts(index: int, start: int, stop: int, parts: list[bytes | memoryview], directory: Path, kind: str,
                 text: bool = False) -> Shard:
    """Write ``parts`` one after the other as ``<kind>-<index>.npy`` in ``directory``, under a
    temporary name then renamed (a reader never sees half a shard; the work directory is
    scratch, so it is not fsynced), and return its :class:`Shard` (rows ``start``-``stop``)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    path = directory / f"{kind}-{index:05d}.npy"
    temporary = path.with_name(f".{path.name}.partial")
    with temporary.open("wb") as handle:
        for part in parts:
            handle.write(part)
    os.replace(temporary, path)
    return Shard(index, start, stop, digest.hexdigest(), path=path, text=text)


def check_no_missing_text(column: pa.ChunkedArray | pa.Array, where: str, first_row: int) -> None:
    """Refuse a missing value in a text column, naming its row (``where``: the file and column;
    ``first_row``: the column's first data row)."""
    if column.null_count:
        nulls = np.asarray(column.is_null())
        raise JobSpecError(f"{where}, data row {first_row + int(np.argmax(nulls)) + 1}: missing text (null); a text "
                           "member needs a string in every row (an empty one is fine)")


def text_bytes_per_row(spec: DataSpec, rows: int = SAMPLE_ROWS) -> float:
    """What a row of ``spec``'s text columns takes in a text shard (each column's UTF-8 bytes and
    its 8-byte offset), the mean over the first ``rows`` rows (``rows_per_shard = "auto"`` sizes
    text shards by it: a text column is not one number wide)."""
    reader = open_data(spec)
    names = [n for n in spec.text if n in reader.schema.names and is_text(reader.schema.field(n).type)]
    if not names:  # (a text column missing or not text is named by the job's checks)
        return 0.0
    table = sample(reader, rows, names, {name: pa.string() for name in names})
    if table.num_rows == 0:
        return 0.0
    text = sum(pc.sum(pc.binary_length(table.column(name))).as_py() or 0 for name in names)
    return float(text / table.num_rows + 8 * len(names))


def text_column(column: pa.ChunkedArray | pa.Array, where: str, first_row: int) -> tuple[np.ndarray, np.ndarray]:
    """A string column as a text shard's two arrays: ``int64`` offsets (one more than the rows,
    from 0) and the rows' UTF-8 bytes, taken from Arrow's own buffers (which hold the strings so,
    checked UTF-8 when read); a missing value is refused naming its row."""
    check_no_missing_text(column, where, first_row)
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    array = array.cast(pa.large_string())  # int64 offsets
    rows = len(array)
    _validity, offsets_buffer, data_buffer = array.buffers()
    if rows == 0 or offsets_buffer is None:
        return np.zeros(1, dtype=np.int64), np.empty(0, dtype=np.uint8)
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[array.offset:array.offset + rows + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.empty(0, dtype=np.uint8)
    return offsets - offsets[0], data[offsets[0]:offsets[-1]]


@dataclass
class SpilledData:
    """A data set cut into shard files (see :func:`spill_shards`)."""

    shards: list[Shard]
    rows: int
    feature_names: tuple[str, ...]
    non_finite: list[NonFinite]
    """Every feature column holding NaN or inf, with its first such rows (the whole data scanned)."""
    labels_path: Path | None = None
    text_shards: dict[str, list[Shard]] = dataclasses.field(default_factory=dict)
    """Per text column (``DataSpec.text``), its shards: text shard files (UTF-8 and offsets, see
    ``executor.textshard``), one per shard."""

    def labels(self) -> np.ndarray | None:
        """The label column (memory-mapped from its file), or None."""
        return None if self.labels_path is None else np.load(self.labels_path, mmap_mode="r", allow_pickle=False)


class _NonFiniteTracker:
    """The first NaN and inf row of each column, over shards seen one after the other."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.found: dict[str, NonFinite] = {}

    def add(self, start: int, matrix: np.ndarray) -> None:
        for problem in non_finite_columns(Dataset(matrix, self.names, None)):
            seen = self.found.get(problem.column)
            first_nan = seen.first_nan if seen and seen.first_nan is not None else (
                None if problem.first_nan is None else start + problem.first_nan)
            if seen and seen.first_inf is not None:
                first_inf, value = seen.first_inf, seen.inf_value
            elif problem.first_inf is not None:
                first_inf, value = start + problem.first_inf, problem.inf_value
            else:
                first_inf, value = None, None
            self.found[problem.column] = NonFinite(problem.column, first_nan, first_inf, value)

    def result(self) -> list[NonFinite]:
        return [self.found[n] for n in self.names if n in self.found]


def iter_data_shards(spec: DataSpec, features: tuple[str, ...], rows_per_shard: int, labels: bool = True
                     ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None, dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """``(start, features, raw labels, text columns)`` of each shard of ``rows_per_shard`` rows,
    streamed (the text columns, ``spec.text``, as :func:`text_column` makes them)."""
    if not labels:
        spec = dataclasses.replace(spec, label=None)
    reader = open_data(spec)
    _checked, types = _columns(dataclasses.replace(spec, features=features), reader)
    if isinstance(reader, NpyReader):  # rows straight from the memory-mapped array
        rows = reader.num_rows
        label = [spec.label] if spec.label is not None else []
        for start in range(0, rows, rows_per_shard):
            stop = min(start + rows_per_shard, rows)
            label_values = reader.float64_rows(start, stop, label)[:, 0] if label else None
            yield start, reader.float64_rows(start, stop, features), label_values, {}
        return
    columns = list(features) + list(spec.text) + ([spec.label] if spec.label is not None else [])
    start = 0
    batches = reader.iter_batches(columns, rows=min(rows_per_shard, DEFAULT_BATCH_ROWS), types=types)
    for table in rebatch(batches, rows_per_shard):  # memory: a shard and a batch no larger
        label_values = _raw_labels(table.column(spec.label)) if spec.label is not None else None
        texts = {name: text_column(table.column(name), f"{spec.path}: text column {name!r}", start)
                 for name in spec.text}
        yield start, to_float64(table, features), label_values, texts
        start += table.num_rows


SCAN_ROWS = 65536


def scan_data(spec: DataSpec, features: tuple[str, ...]) -> tuple[int, list[NonFinite]]:
    """Read every row once (nothing kept): how many there are, and every feature column holding
    NaN or inf with its first such rows (``validate --scan``)."""
    tracker = _NonFiniteTracker(features)
    rows = 0
    for start, matrix, _labels, _texts in iter_data_shards(spec, features, SCAN_ROWS, labels=False):
        tracker.add(start, matrix)
        rows = start + matrix.shape[0]
    return rows, tracker.result()


SPILL_THREADS = 2
"""Threads that checksum and write shard files while the data is read (see :func:`spill_shards`)."""


def spill_shards(spec: DataSpec, features: tuple[str, ...], directory: Path,
                 rows_per_shard: int | None = None, kind: str = "data") -> SpilledData:
    """Stream ``spec``'s rows once, writing each shard (``rows_per_shard`` rows, default the
    spec's) as a ``.npy`` file in ``directory``; also scan for NaN/inf and keep the labels in a
    ``.npy`` file of their own.  Memory: a few shards (the one read, those being written on
    :data:`SPILL_THREADS` threads) and one read batch."""
    per_shard = rows_per_shard or spec.resolved_rows_per_shard
    directory.mkdir(parents=True, exist_ok=True)
    tracker = _NonFiniteTracker(features)
    written: list[Future[Shard]] = []
    text_written: dict[str, list[Future[Shard]]] = {name: [] for name in spec.text}
    parts = directory / f".{kind}-labels.parts"
    # Each shard's checksum and file are made on SPILL_THREADS threads (hashlib and file writes
    # release the GIL) while this thread reads and scans the next shard: the shards' cutting is
    # what the first launch waits for when the models' inspection is cached.
    with parts.open("wb") as label_parts, ThreadPoolExecutor(SPILL_THREADS, thread_name_prefix="spill") as pool:
        for index, (start, matrix, labels, texts) in enumerate(iter_data_shards(spec, features, per_shard)):
            # Memory: a shard's rows are let go once written; at most SPILL_THREADS more wait.
            while len(pending := [f for f in written[-2 * SPILL_THREADS:] if not f.done()]) > SPILL_THREADS:
                wait_futures(pending, return_when=FIRST_COMPLETED)
            written.append(pool.submit(write_shard, index, start, matrix, directory, kind))
            for number, name in enumerate(spec.text):
                text_written[name].append(pool.submit(write_text_shard, index, start, texts[name], directory,
                                                      text_kind(number)))
            tracker.add(start, matrix)
            if labels is not None:
                np.save(label_parts, labels, allow_pickle=False)
    shards = [f.result() for f in written]
    text_shards = {name: [f.result() for f in futures] for name, futures in text_written.items()}
    rows = shards[-1].stop if shards else 0
    if rows == 0:
        parts.unlink()
        raise JobSpecError(f"{spec.path}: no data rows")
    labels_path = (_join_labels(parts, len(shards), directory / f"{kind}-labels.npy", rows)
                   if spec.label is not None else None)
    parts.unlink()
    return SpilledData(shards, rows, features, tracker.result(), labels_path, text_shards)


def text_kind(number: int) -> str:
    """The shard kind (file name prefix, artifact name) of the ``number``-th text column."""
    return f"text{number}"


def _join_labels(parts: Path, count: int, path: Path, rows: int) -> Path:
    """One label file from the shards' parts, typed as :func:`_numeric_labels` types a column
    (integers if all are, else floats, else text); read part by part, twice."""
    numeric, integral, width = True, True, 1
    with parts.open("rb") as handle:
        for _ in range(count):
            values = np.load(handle, allow_pickle=False)
            if values.dtype.kind in "US":
                width = max(width, int(np.char.str_len(values).max(initial=1)))
            if numeric:
                try:
                    as_float = values.astype(np.float64)
                except ValueError:
                    numeric = False
                    continue
                integral = integral and bool(np.all(np.isfinite(as_float)) and np.all(as_float == np.round(as_float)))
    if not numeric:  # text after all: the numbers' widths count too
        width = max(width, 32)
    dtype = np.dtype(np.int64) if numeric and integral else np.dtype(np.float64) if numeric else np.dtype(f"<U{width}")
    target = atomic.create_sibling(path, ".partial.npy")
    out = np.lib.format.open_memmap(target, mode="w+", dtype=dtype, shape=(rows,))
    offset = 0
    with parts.open("rb") as handle:
        for _ in range(count):
            values = np.load(handle, allow_pickle=False)
            converted = values.astype(np.float64).astype(dtype) if numeric else values.astype(str)
            out[offset:offset + len(values)] = converted
            offset += len(values)
    out.flush()
    del out
    os.replace(target, path)
    return path


def cut_shards(features: np.ndarray, rows_per_shard: int) -> list[Shard]:
    """Cut an in-memory ``features`` into consecutive shards of ``rows_per_shard`` rows, without
    copying them; each shard's checksum is that of the ``.npy`` file ``np.save`` would write."""
    features = np.ascontiguousarray(features)
    shards = []
    for index, start in enumerate(range(0, features.shape[0], rows_per_shard)):
        stop = min(start + rows_per_shard, features.shape[0])
        rows = features[start:stop]  # C-contiguous rows of a C-contiguous array: a view
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(rows))
        body = memoryview(rows.data).cast("B")
        digest = hashlib.sha256(header.getvalue())
        digest.update(body)
        shards.append(Shard(index, start, stop, digest.hexdigest(), npy_parts=(header.getvalue(), body)))
    return shards


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data`` (see :mod:`framework.atomic`)."""
    atomic.write_bytes(path, data)
