"""Reading tables as users have them, streamed: Parquet, Arrow IPC (Feather v2), CSV and ``.npy``.

One interface for every format (:func:`open_table` returns a :class:`TableReader`): the
``schema`` (column names and Arrow types, known without reading the rows), ``num_rows`` when it
is known cheaply, and :meth:`TableReader.iter_batches`, which streams chosen columns in file
order with memory bounded by one batch, whatever the file's size. Nothing here holds a whole
table. A directory is read as one table made of its files in name order (all of one format);
a file whose schema differs from the first's is refused naming the file and the column.

Bad input raises :class:`ReadError` (a :class:`JobSpecError`: one line naming the file, the
column, the row or byte, and what was expected; the command line exits 2).

CSV goes through pyarrow's streaming reader (quoting, encodings, missing values: an empty
field, ``NA``, ``NaN``, ``null`` ... are missing). Its ``schema`` is inferred from the first
block; :meth:`TableReader.iter_batches` takes ``types`` to read columns as a given type instead
(the data's feature columns are read as float64), so a later block cannot change them. pyarrow
does not say on which row a value failed to convert; on that (error) path the file is scanned
again with the ``csv`` module to name the line, the column and the value.
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq

from framework.errors import JobSpecError

FORMATS = ("parquet", "arrow", "csv", "npy")
SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".feather": "arrow", ".arrow": "arrow", ".ipc": "arrow",
            ".csv": "csv", ".npy": "npy"}
"""File name endings and the format they are read as (``.csv.gz``/``.csv.bz2``... are CSV, decompressed)."""

DEFAULT_BATCH_ROWS = 65536
CSV_BLOCK_BYTES = 1 << 20
"""Bytes of CSV parsed at a time (pyarrow's block). pyarrow reads ahead ~32 blocks: the CSV reader holds ~35 MB."""


class ReadError(JobSpecError):
    """A file that cannot be read as the table it should be: one line naming file, column, row."""


@dataclass(frozen=True)
class CsvOptions:
    """How a CSV file is written: its delimiter, quote character and text encoding."""

    delimiter: str = ","
    quote_char: str = '"'
    encoding: str = "utf-8"
    newlines_in_values: bool = False
    """Quoted values may hold line breaks (slower: pyarrow then parses serially)."""


class TableReader(Protocol):
    """A table streamed from a file (see the module docstring)."""

    path: Path
    format: str
    """One of :data:`FORMATS`."""

    @property
    def schema(self) -> pa.Schema:
        """Column names and Arrow types (CSV: inferred from the first block)."""
        ...

    @property
    def num_rows(self) -> int | None:
        """Rows, when known without reading the data (Parquet, Arrow, .npy metadata); CSV: None."""
        ...

    def iter_batches(self, columns: Sequence[str] | None = None, rows: int = DEFAULT_BATCH_ROWS,
                     types: Mapping[str, pa.DataType] | None = None, start: int = 0) -> Iterator[pa.RecordBatch]:
        """The rows in file order, only ``columns`` (default all, in the schema's order; else in the
        order given), batches of at most ``rows`` rows, ``types`` forcing columns' types (a value
        that does not convert raises :class:`ReadError` naming its row), from row ``start`` on
        (Parquet/Arrow skip the row groups/batches before it unread; CSV parses and drops them)."""
        ...


def format_of(path: Path) -> str | None:
    """The format a file name says (``data.csv.gz`` is CSV); None when it says none we read."""
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) >= 2 and suffixes[-2] == ".csv" and suffixes[-1] in (".gz", ".bz2", ".zst", ".lz4"):
        return "csv"
    return SUFFIXES.get(path.suffix.lower())


def open_table(path: Path | str, csv_options: CsvOptions | None = None) -> TableReader:
    """A reader for ``path`` (a file, or a directory of files of one format), its format read from
    the name; raises :class:`ReadError` when it is not a readable table."""
    path = Path(path)
    if path.is_dir():
        return DirectoryReader(path, csv_options)
    kind = format_of(path)
    if kind is None:
        raise ReadError(f"{path}: expected a .parquet, .feather/.arrow, .csv or .npy file, got {path.name!r}")
    if not path.is_file():
        raise ReadError(f"{path}: no such file")
    if kind == "parquet":
        return ParquetReader(path)
    if kind == "arrow":
        return ArrowReader(path)
    if kind == "npy":
        return NpyReader(path)
    return CsvReader(path, csv_options or CsvOptions())


def is_numeric(kind: pa.DataType) -> bool:
    """A type a feature column may have: integers, floats, decimals, booleans (or all-null)."""
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
                or pa.types.is_boolean(kind) or pa.types.is_null(kind))


def rebatch(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """``batches`` regrouped into tables of exactly ``rows`` rows (the last may be shorter): the
    shards of a stream. Memory: one table plus one batch."""
    pending: list[pa.RecordBatch] = []
    have = 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - have, batch.num_rows)
            pending.append(batch.slice(0, take))
            have += take
            batch = batch.slice(take)
            if have == rows:
                yield pa.Table.from_batches(pending)
                pending, have = [], 0
    if have:
        yield pa.Table.from_batches(pending)


def to_float64(table: pa.Table | pa.RecordBatch, columns: Sequence[str]) -> np.ndarray:
    """``columns`` of ``table`` as a C-ordered float64 matrix; nulls become NaN, booleans 0/1."""
    out = np.empty((table.num_rows, len(columns)), dtype=np.float64)
    for j, name in enumerate(columns):
        column = table.column(name)
        if not pa.types.is_floating(column.type) or column.type != pa.float64():
            column = column.cast(pa.float64())
        out[:, j] = column.to_numpy(zero_copy_only=False) if isinstance(column, pa.Array) else \
            column.to_numpy()
    return out


def count_rows(reader: TableReader) -> int:
    """The reader's rows: from its metadata, or by streaming one (cheap) column."""
    if reader.num_rows is not None:
        return reader.num_rows
    first = reader.schema.names[:1]
    return sum(b.num_rows for b in reader.iter_batches(first, types={first[0]: pa.string()}))


def sample(reader: TableReader, rows: int, columns: Sequence[str] | None = None,
           types: Mapping[str, pa.DataType] | None = None) -> pa.Table:
    """The first ``rows`` rows (fewer if the table is shorter), as one table."""
    taken: list[pa.RecordBatch] = []
    have = 0
    for batch in reader.iter_batches(columns, rows=min(rows, DEFAULT_BATCH_ROWS), types=types):
        taken.append(batch.slice(0, rows - have))
        have += taken[-1].num_rows
        if have >= rows:
            break
    if not taken:
        names = list(columns) if columns is not None else reader.schema.names
        schema = pa.schema([reader.schema.field(n) for n in names])
        return schema.empty_table()
    return pa.Table.from_batches(taken)


def _select(schema: pa.Schema, columns: Sequence[str] | None, path: Path) -> list[str]:
    names = list(schema.names)
    if columns is None:
        return names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ReadError(f"{path}: no column {missing[0]!r} (it has {', '.join(names[:20])}"
                        f"{', ...' if len(names) > 20 else ''})")
    return list(columns)


def _cast(batch: pa.RecordBatch, types: Mapping[str, pa.DataType] | None, path: Path,
          first_row: int) -> pa.RecordBatch:
    """``batch`` with ``types`` applied; a value that does not convert is named by its row."""
    if not types:
        return batch
    arrays = []
    for name, column in zip(batch.schema.names, batch.columns):
        wanted = types.get(name)
        if wanted is None or column.type == wanted:
            arrays.append(column)
            continue
        try:
            arrays.append(column.cast(wanted))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ReadError(_bad_value(path, name, column, wanted, first_row)) from None
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _bad_value(path: Path, name: str, column: pa.Array, wanted: pa.DataType, first_row: int) -> str:
    for i, value in enumerate(column.to_pylist()):
        try:
            pa.array([value], type=column.type).cast(wanted)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return (f"{path}: column {name!r}, data row {first_row + i + 1}: {value!r} is not a number"
                    if pa.types.is_floating(wanted) else
                    f"{path}: column {name!r}, data row {first_row + i + 1}: {value!r} is not {wanted}")
    return f"{path}: column {name!r} ({column.type}) cannot be read as {wanted}"


class ParquetReader:
    """A Parquet file, streamed by row group (pyarrow reads only the columns asked for)."""

    format = "parquet"

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering holds ~3x more row groups
        except (pa.ArrowInvalid, OSError) as error:
            raise ReadError(f"{path}: not a readable Parquet file: {error}") from None

    @property
    def schema(self) -> pa.Schema:
        return self._file.schema_arrow

    @property
    def num_rows(self) -> int:
        return int(self._file.metadata.num_rows)

    def iter_batches(self, columns: Sequence[str] | None = None, rows: int = DEFAULT_BATCH_ROWS,
                     types: Mapping[str, pa.DataType] | None = None, start: int = 0) -> Iterator[pa.RecordBatch]:
        names = _select(self.schema, columns, self.path)
        groups: list[int] = []
        first, offset = 0, 0
        for g in range(self._file.num_row_groups):
            size = self._file.metadata.row_group(g).num_rows
            if offset + size > start:
                if not groups:
                    first = offset
                groups.append(g)
            offset += size
        drop, done = start - first, start
        try:
            for batch in self._file.iter_batches(batch_size=rows, row_groups=groups, columns=names, use_threads=True):
                batch = batch.select(names)  # in the order asked for
                if drop:
                    batch, drop = batch.slice(min(drop, batch.num_rows)), max(0, drop - batch.num_rows)
                    if not batch.num_rows:
                        continue
                yield _cast(batch, types, self.path, done)
                done += batch.num_rows
        except (pa.ArrowInvalid, OSError) as error:
            raise ReadError(f"{self.path}: Parquet data unreadable after row {done}: {error}") from None


class ArrowReader:
    """An Arrow IPC file (Feather v2), memory-mapped and read batch by batch."""

    format = "arrow"

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._reader = pa_ipc.open_file(pa.memory_map(str(path), "r"))
        except (pa.ArrowInvalid, OSError) as error:
            raise ReadError(f"{path}: not an Arrow IPC / Feather v2 file: {error}") from None

    @property
    def schema(self) -> pa.Schema:
        return self._reader.schema

    @property
    def num_rows(self) -> int:
        return int(self._reader.count_rows())

    def iter_batches(self, columns: Sequence[str] | None = None, rows: int = DEFAULT_BATCH_ROWS,
                     types: Mapping[str, pa.DataType] | None = None, start: int = 0) -> Iterator[pa.RecordBatch]:
        names = _select(self.schema, columns, self.path)
        done = 0
        for i in range(self._reader.num_record_batches):
            whole = self._reader.get_batch(i)  # memory-mapped: nothing is read until sliced
            if done + whole.num_rows <= start:
                done += whole.num_rows
                continue
            whole = whole.select(names).slice(max(0, start - done))
            done = max(done, start)
            for offset in range(0, whole.num_rows, rows):
                batch = whole.slice(offset, rows)
                yield _cast(batch, types, self.path, done)
                done += batch.num_rows


class NpyReader:
    """A 2-D numeric ``.npy`` array (columns ``x0``, ``x1``, ...), memory-mapped, read in slices."""

    format = "npy"

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as handle:
            magic = handle.read(6)
        if not magic:
            raise ReadError(f"{path}: empty file, expected a .npy array")
        if magic != b"\x93NUMPY":
            raise ReadError(f"{path}: not a .npy file (it does not start with the NUMPY magic bytes)")
        try:
            self._array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, EOFError, OSError) as error:
            raise ReadError(f"{path}: not a readable .npy array: {error}") from None
        if self._array.ndim != 2 or self._array.shape[0] == 0:
            raise ReadError(f"{path}: expected a non-empty 2-D array, got shape {self._array.shape}")
        if self._array.dtype.kind not in "biuf":
            raise ReadError(f"{path}: expected a numeric array, got dtype {self._array.dtype}")
        kind = pa.from_numpy_dtype(self._array.dtype)
        self._schema = pa.schema([(f"x{i}", kind) for i in range(self._array.shape[1])])

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    @property
    def num_rows(self) -> int:
        return int(self._array.shape[0])

    def iter_batches(self, columns: Sequence[str] | None = None, rows: int = DEFAULT_BATCH_ROWS,
                     types: Mapping[str, pa.DataType] | None = None, start: int = 0) -> Iterator[pa.RecordBatch]:
        names = _select(self._schema, columns, self.path)
        indexes = [int(n[1:]) for n in names]
        for first in range(start, self.num_rows, rows):
            block = np.asarray(self._array[first:first + rows])  # one slice read from the file
            batch = pa.RecordBatch.from_arrays([pa.array(block[:, j]) for j in indexes], names=names)
            yield _cast(batch, types, self.path, first)

    def float64_rows(self, start: int, stop: int, columns: Sequence[str]) -> np.ndarray:
        """Rows ``[start, stop)`` of ``columns`` as float64 (a fast path that skips Arrow)."""
        indexes = [int(n[1:]) for n in columns]
        block = self._array[start:stop]
        if indexes == list(range(self._array.shape[1])):
            return np.ascontiguousarray(block, dtype=np.float64)
        return np.ascontiguousarray(block[:, indexes], dtype=np.float64)


class CsvReader:
    """A CSV file with a header line, streamed block by block by pyarrow's CSV reader."""

    format = "csv"

    def __init__(self, path: Path, options: CsvOptions) -> None:
        self.path, self.options = path, options
        self._schema: pa.Schema | None = None

    def _open(self, columns: Sequence[str] | None, types: Mapping[str, pa.DataType] | None,
              start: int = 0) -> pa_csv.CSVStreamingReader:
        read = pa_csv.ReadOptions(block_size=CSV_BLOCK_BYTES, encoding=self.options.encoding, use_threads=True,
                                  skip_rows_after_names=start)
        parse = pa_csv.ParseOptions(delimiter=self.options.delimiter, quote_char=self.options.quote_char,
                                    newlines_in_values=self.options.newlines_in_values)
        convert = pa_csv.ConvertOptions(column_types=dict(types or {}),
                                        include_columns=list(columns) if columns is not None else None,
                                        strings_can_be_null=False)
        try:
            return pa_csv.open_csv(str(self.path), read_options=read, parse_options=parse, convert_options=convert)
        except (pa.ArrowInvalid, UnicodeDecodeError, LookupError) as error:
            raise ReadError(self._diagnose(error, start)) from None

    @property
    def schema(self) -> pa.Schema:
        if self._schema is None:
            self._schema = self._open(None, None).schema
        return self._schema

    @property
    def num_rows(self) -> int | None:
        return None

    def iter_batches(self, columns: Sequence[str] | None = None, rows: int = DEFAULT_BATCH_ROWS,
                     types: Mapping[str, pa.DataType] | None = None, start: int = 0) -> Iterator[pa.RecordBatch]:
        names = _select(self.schema, columns, self.path)
        reader = self._open(names, {n: t for n, t in (types or {}).items() if n in names}, start)
        done = start
        while True:
            try:
                block = reader.read_next_batch()
            except StopIteration:
                return
            except (pa.ArrowInvalid, UnicodeDecodeError) as error:
                raise ReadError(self._diagnose(error, done)) from None
            block = block.select(names)
            for start in range(0, block.num_rows, rows):
                batch = block.slice(start, rows)
                done += batch.num_rows
                yield batch

    def _diagnose(self, error: Exception, rows_read: int) -> str:
        """One line saying where the file goes wrong (pyarrow's message names no row)."""
        text = str(error)
        if "Empty CSV file" in text:
            return f"{self.path}: empty CSV, expected a header line"
        if isinstance(error, LookupError):
            return f"{self.path}: unknown text encoding {self.options.encoding!r}"
        if self.options.encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
            bad = _first_non_utf8(self.path)
            if bad is not None:
                return bad
        found = _scan_for_problem(self.path, self.options, text)
        return found or f"{self.path}: malformed CSV after data row {rows_read}: {text}"


def _first_non_utf8(path: Path) -> str | None:
    """The first byte that is not UTF-8, as the message to report (streamed: the error path)."""
    offset, line, carry = 0, 1, b""
    with path.open("rb") as handle:
        while True:
            chunk = handle.read(1 << 20)
            data = carry + chunk
            try:
                data.decode("utf-8")
                good, carry = len(data), b""
            except UnicodeDecodeError as error:
                if not (chunk and error.reason == "unexpected end of data"):
                    where = offset + error.start
                    at = line + data.count(b"\n", 0, error.start)
                    return (f"{path}: not UTF-8 text: byte 0x{data[error.start]:02x} at offset {where} (line {at}) "
                            f"{error.reason}; expected a UTF-8 CSV (re-save it as UTF-8, or set [data] encoding)")
                good, carry = error.start, data[error.start:]  # a character split between chunks
            offset += good
            line += data.count(b"\n", 0, good)
            if not chunk:
                return None


def _scan_for_problem(path: Path, options: CsvOptions, arrow_message: str) -> str | None:
    """The first ragged line or unconvertible value, found with the ``csv`` module (error path)."""
    column = None
    if arrow_message.startswith("In CSV column #"):
        column = int(arrow_message[len("In CSV column #"):].split(":", 1)[0])
    with path.open(encoding=options.encoding, errors="replace", newline="") as handle:
        if handle.read(1) != "\ufeff":
            handle.seek(0)
        rows = csv.reader(handle, delimiter=options.delimiter, quotechar=options.quote_char)
        header = next(rows, None)
        if not header:
            return None
        for number, fields in zip(itertools.count(1), rows):
            if not fields:
                continue
            if len(fields) != len(header):
                return f"{path}: line {rows.line_num} has {len(fields)} fields, the header has {len(header)}"
            if column is not None and "conversion error to double" in arrow_message:
                value = fields[column].strip()
                if value and not _is_float(value) and value not in NULL_VALUES:
                    return f"{path}: column {header[column]!r}, data row {number}: {fields[column]!r} is not a number"
    return None


NULL_VALUES = frozenset(pa_csv.ConvertOptions().null_values)
"""What pyarrow reads as a missing value in a CSV field ("", "NA", "NaN", "null", ...)."""


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


class DirectoryReader:
    """The files of a directory (of one format) read one after the other, as one table; every
    file must have the first one's columns and types (schema drift is named by file and column)."""

    def __init__(self, path: Path, csv_options: CsvOptions | None) -> None:
        self.path = path
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith((".", "_"))
                       and format_of(p) is not None)
        if not files:
            raise ReadError(f"{path}: a directory with no .parquet, .feather/.arrow, .csv or .npy files")
        formats = {format_of(p) for p in files}
        if len(formats) > 1:
            raise ReadError(f"{path}: holds files of several formats ({', '.join(sorted(f or '' for f in formats))}); "
                            "expected one")
        self.readers = [open_table(p, csv_options) for p in files]
        self.format = self.readers[0].format
        first = self.readers[0]
        for other in self.readers[1:]:
            _check_same_schema(first, other)

    @property
    def schema(self) -> pa.Schema:
        return self.readers[0].schema

    @property
    def num_rows(self) -> int | None:
        counts = [r.num_rows for r in self.readers]
        return None if any(c is None for c in counts) else sum(c for c in counts if c is not None)

    def iter_batches(self, columns: Sequence[str] | None = None, rows: int = DEFAULT_BATCH_ROWS,
                     types: Mapping[str, pa.DataType] | None = None, start: int = 0) -> Iterator[pa.RecordBatch]:
        for reader in self.readers:
            if start > 0:
                size = count_rows(reader)
                if size <= start:
                    start -= size
                    continue
            yield from reader.iter_batches(columns, rows, types, start)
            start = 0


def _check_same_schema(first: TableReader, other: TableReader) -> None:
    """``other`` has ``first``'s columns with the same types (CSV: types are compared after
    reading, as floats, so only the names are compared here)."""
    a, b = first.schema, other.schema
    if a.names != b.names:
        gone = [n for n in a.names if n not in b.names]
        new = [n for n in b.names if n not in a.names]
        what = (f"has no column {gone[0]!r}" if gone else f"has a column {new[0]!r}" if new
                else f"has the columns in another order ({', '.join(b.names[:10])})")
        raise ReadError(f"{other.path}: {what}, unlike {first.path.name} ({', '.join(a.names[:10])})")
    if first.format == "csv":
        return
    for field in a:
        theirs = b.field(field.name).type
        if theirs != field.type and not (is_numeric(theirs) and is_numeric(field.type)):
            raise ReadError(f"{other.path}: column {field.name!r} is {theirs}, {first.path.name} has {field.type}")
