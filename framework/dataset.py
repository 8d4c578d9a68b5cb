"""Input data: read a CSV (with a header) or ``.npy`` file, pick features and label, cut shards.

Shards are ``.npy`` bytes (exact float64, no pickle) made of a header and a view of the rows,
which the artifact server hands to executors from memory: cutting a data set copies nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from framework import atomic
from framework.errors import JobSpecError
from framework.jobspec import DataSpec


@dataclass(frozen=True)
class Dataset:
    """Feature matrix (float64), their column names, and the label column if any."""

    features: np.ndarray
    feature_names: tuple[str, ...]
    labels: np.ndarray | None


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of the features as ``.npy`` bytes: a header and a view of the rows
    (no copy), served to executors straight from memory."""

    index: int
    start: int
    stop: int
    npy_parts: tuple[bytes, memoryview]
    sha256: str

    @property
    def rows(self) -> int:
        return self.stop - self.start


def _numeric_labels(values: np.ndarray) -> np.ndarray:
    """Labels as numbers when every value is numeric (integers stay integers), else as strings."""
    try:
        as_float = values.astype(np.float64)
    except ValueError:
        return values.astype(str)
    if np.all(np.isfinite(as_float)) and np.all(as_float == np.round(as_float)):
        return as_float.astype(np.int64)
    return as_float


def load_dataset(spec: DataSpec) -> Dataset:
    """Load ``spec.path``; raise :class:`JobSpecError` naming the file and column on bad data.

    An empty CSV field is a missing value (NaN), as a written-out DataFrame has it; whether a
    job may use NaN is decided later (``framework.preflight``), knowing which model takes which column.
    """
    if spec.path.suffix == ".npy":
        return _load_npy(spec)
    text = _read_utf8(spec.path)  # a check (decoding is ~1% of parsing); numpy parses from the file
    header = next(csv.reader(io.StringIO(text[:text.find("\n") + 1] if "\n" in text else text)), None)
    if not header:
        raise JobSpecError(f"{spec.path}: empty CSV, expected a header line")
    columns = {name: i for i, name in enumerate(header)}
    if spec.label is not None and spec.label not in columns:
        raise JobSpecError(f"{spec.path}: label column {spec.label!r} is not in the header {header[:20]}")
    names = spec.features or tuple(n for n in header if n != spec.label)
    for name in names:
        if name not in columns:
            raise JobSpecError(f"{spec.path}: feature column {name!r} is not in the header {header}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": reported below
            raw = np.loadtxt(spec.path, delimiter=",", skiprows=1, dtype=str, ndmin=2, encoding="utf-8-sig")
    except ValueError as error:
        ragged = _ragged_row(spec.path, text, len(header))
        raise JobSpecError(ragged or f"{spec.path}: malformed CSV: {error}") from None
    if raw.shape[0] == 0:
        raise JobSpecError(f"{spec.path}: no data rows after the header")
    if raw.shape[1] != len(header):
        raise JobSpecError(_ragged_row(spec.path, text, len(header))
                           or f"{spec.path}: rows have {raw.shape[1]} fields, the header has {len(header)}")
    features = np.empty((raw.shape[0], len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        column = raw[:, columns[name]]
        try:
            features[:, j] = column.astype(np.float64)
        except ValueError:
            features[:, j] = _with_missing(spec.path, name, column)
    labels = _numeric_labels(raw[:, columns[spec.label]]) if spec.label else None
    return Dataset(features, tuple(names), labels)


def _read_utf8(path: Path) -> str:
    """The file's text (a UTF-8 byte-order mark is dropped); a file that is not UTF-8 is refused
    naming the first bad byte's offset and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise JobSpecError(f"{path}: not UTF-8 text: byte 0x{data[error.start]:02x} at offset {error.start} "
                           f"(line {line}) {error.reason}; expected a UTF-8 CSV (re-save it as UTF-8)") from None


def _ragged_row(path: Path, text: str, fields: int) -> str | None:
    """The first line whose field count differs from the header's (only looked for after the
    fast parser failed), as the message to report."""
    for number, line in enumerate(text.splitlines(), start=1):
        if number > 1 and line.strip() and line.count(",") + 1 != fields:
            return f"{path}: line {number} has {line.count(',') + 1} fields, the header has {fields}"
    return None


def _with_missing(path: Path, name: str, column: np.ndarray) -> np.ndarray:
    """A column holding empty fields: those become NaN; any other non-number is refused."""
    stripped = np.char.strip(column)
    missing = stripped == ""
    try:
        return np.where(missing, "nan", stripped).astype(np.float64)
    except ValueError:
        bad = next(i for i, v in enumerate(stripped) if v != "" and not _is_float(v))
        value = str(column[bad])
        raise JobSpecError(f"{path}: column {name!r}, data row {bad + 1}: {value!r} is not a number") from None


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


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _load_npy(spec: DataSpec) -> Dataset:
    with spec.path.open("rb") as handle:
        magic = handle.read(6)
    if not magic:
        raise JobSpecError(f"{spec.path}: empty file, expected a .npy array")
    if magic != b"\x93NUMPY":
        raise JobSpecError(f"{spec.path}: not a .npy file (it does not start with the NUMPY magic bytes)")
    try:
        array = np.load(spec.path, allow_pickle=False)
    except (ValueError, EOFError) as error:
        raise JobSpecError(f"{spec.path}: not a readable .npy array: {error}") from None
    if array.ndim != 2 or array.shape[0] == 0:
        raise JobSpecError(f"{spec.path}: expected a non-empty 2-D array, got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise JobSpecError(f"{spec.path}: expected a numeric array, got dtype {array.dtype}")
    names = [f"x{i}" for i in range(array.shape[1])]
    label_index = None
    if spec.label is not None:
        if spec.label not in names:
            raise JobSpecError(f"{spec.path}: label {spec.label!r} must name a column x0..x{array.shape[1] - 1}")
        label_index = names.index(spec.label)
    chosen = list(spec.features or [n for n in names if n != spec.label])
    for name in chosen:
        if name not in names:
            raise JobSpecError(f"{spec.path}: feature {name!r} must name a column x0..x{array.shape[1] - 1}")
    columns = [names.index(n) for n in chosen]
    # Selecting every column in order needs no copy (fancy indexing would copy the whole array).
    selected = array if columns == list(range(array.shape[1])) else array[:, columns]
    features = np.ascontiguousarray(selected, dtype=np.float64)
    labels = _numeric_labels(array[:, label_index]) if label_index is not None else None
    return Dataset(features, tuple(chosen), labels)


def cut_shards(features: np.ndarray, rows_per_shard: int) -> list[Shard]:
    """Cut ``features`` into consecutive shards of ``rows_per_shard`` rows, without copying them;
    each shard's checksum is that of the ``.npy`` file ``np.save`` would write for its rows."""
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
        shards.append(Shard(index, start, stop, (header.getvalue(), body), digest.hexdigest()))
    return shards


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data`` (see :mod:`framework.atomic`)."""
    atomic.write_bytes(path, data)
