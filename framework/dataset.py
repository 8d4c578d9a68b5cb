"""Input data: read a CSV (with a header) or ``.npy`` file, pick features and label, cut shards.

Shards are ``.npy`` bytes (exact float64, no pickle) made of a header and a view of the rows,
which the artifact server hands to executors from memory: cutting a data set copies nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
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
    """Load ``spec.path``; raise :class:`JobSpecError` naming the file and column on bad data."""
    if spec.path.suffix == ".npy":
        return _load_npy(spec)
    with spec.path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise JobSpecError(f"{spec.path}: empty CSV, expected a header line")
    columns = {name: i for i, name in enumerate(header)}
    if spec.label is not None and spec.label not in columns:
        raise JobSpecError(f"{spec.path}: label column {spec.label!r} is not in the header")
    names = spec.features or tuple(n for n in header if n != spec.label)
    for name in names:
        if name not in columns:
            raise JobSpecError(f"{spec.path}: feature column {name!r} is not in the header {header}")
    try:
        raw = np.loadtxt(spec.path, delimiter=",", skiprows=1, dtype=str, ndmin=2, encoding="utf-8")
    except ValueError as error:
        raise JobSpecError(f"{spec.path}: malformed CSV: {error}") from None
    if raw.shape[0] == 0:
        raise JobSpecError(f"{spec.path}: no data rows after the header")
    if raw.shape[1] != len(header):
        raise JobSpecError(f"{spec.path}: rows have {raw.shape[1]} fields, the header has {len(header)}")
    features = np.empty((raw.shape[0], len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        try:
            features[:, j] = raw[:, columns[name]].astype(np.float64)
        except ValueError:
            bad = next(i for i, v in enumerate(raw[:, columns[name]]) if not _is_float(v))
            raise JobSpecError(
                f"{spec.path}: column {name!r}, data row {bad + 1}: {raw[bad, columns[name]]!r} is not a number"
            ) from None
    labels = _numeric_labels(raw[:, columns[spec.label]]) if spec.label else None
    return Dataset(features, tuple(names), labels)


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _load_npy(spec: DataSpec) -> Dataset:
    try:
        array = np.load(spec.path, allow_pickle=False)
    except ValueError as error:
        raise JobSpecError(f"{spec.path}: not a readable .npy array: {error}") from None
    if array.ndim != 2 or array.shape[0] == 0:
        raise JobSpecError(f"{spec.path}: expected a non-empty 2-D array, got shape {array.shape}")
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
        body = memoryview(rows).cast("B")
        digest = hashlib.sha256(header.getvalue())
        digest.update(body)
        shards.append(Shard(index, start, stop, (header.getvalue(), body), digest.hexdigest()))
    return shards


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data`` (see :mod:`framework.atomic`)."""
    atomic.write_bytes(path, data)
