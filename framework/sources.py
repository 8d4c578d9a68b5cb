"""Several sources joined by key (``[[sources]]``): which rows line up, which columns each member
takes, and the shard files each member downloads.

The join, in three steps, none of which holds a whole source in memory:

1. **Keys** (:func:`join_sources`): the key column of every source is read (only it), checked
   (no nulls, no duplicates, one key type across sources) and turned into a row index: for each
   output row, its row in every source.  The output keeps the primary source's row order; a
   primary key that another source lacks is an error or, with ``missing = "drop"``, drops the row
   for every member (counted per source).  Memory: the key columns, the label column and one
   ``int64`` row number per output row and source.
2. **Columns** (:func:`resolve_columns`): each member's columns, per source and in its order, from
   the job file (``source`` [+ ``features``] or ``columns``) or the columns it was fitted on
   (``feature_names_in_``); their types checked (numbers only).  The columns are then cut into
   *column groups*: the columns of one source taken by the same set of members.  A member's
   input is a few runs of columns of its groups, so an executor whose members take only some
   columns downloads only the groups that hold them.
3. **Shards** (:meth:`JoinedData.write_shards`): one ``.npy`` file per column group and shard
   (float64, the shard's rows in output order), written to the work directory.  Rows are
   gathered in waves of whole shards that fit ``budget_bytes`` (256 MB by default): per wave,
   each source is streamed once in file order, from the first to the last row the wave needs
   (Parquet and Arrow skip the row groups before it unread), only the wave's columns, batch by
   batch; NaN and inf are
   checked there against each taking member's ``allow_nan``.  Peak memory is the wave plus one
   batch of one source; a source in another order than the primary costs one read of it per
   wave, never more memory.

Files are read through :mod:`framework.readers` (pyarrow: Parquet, Feather/Arrow IPC, CSV; numpy
``.npy``), which knows the formats.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from framework import readers
from framework.errors import JobSpecError
from framework.jobspec import JobSpec, ModelSpec, SourceColumns, SourceSpec

DEFAULT_BUDGET_BYTES = 256 * 2**20
"""Rows gathered at once while writing shard files (a wave of whole shards, float64)."""

MAX_SAMPLE_KEYS = 3
"""Missing keys named in an error or in the summary."""


# Reading -------------------------------------------------------------------------------------

class SourceReader:
    """One source file through :func:`framework.readers.open_table` (Parquet, Arrow IPC/Feather,
    CSV, ``.npy``, or a directory of such files), read by column and streamed in blocks, never
    whole."""

    def __init__(self, path: Path, where: str) -> None:
        self.path, self.where = path, where
        self._reader = readers.open_table(path)
        self.schema: pa.Schema = self._reader.schema

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    def type_of(self, column: str) -> pa.DataType:
        return self.schema.field(column).type

    def read_column(self, column: str) -> pa.Array:
        """One whole column (keys and labels only), read as the schema says (CSV: as its first
        block was inferred, so a later block cannot change it)."""
        batches = [b.column(0) for b in self._reader.iter_batches([column], types={column: self.type_of(column)})]
        return pa.concat_arrays(batches) if batches else pa.array([], type=self.type_of(column))

    def blocks(self, columns: Sequence[str], first_row: int, last_row: int) -> Iterator[tuple[int, pa.RecordBatch]]:
        """``(first row, batch of columns as float64)`` in file order, from ``first_row`` up to the
        batch holding ``last_row`` (Parquet and Arrow skip what is before unread; the rest of the
        file is not read)."""
        start = first_row
        for batch in self._reader.iter_batches(list(columns), types={c: pa.float64() for c in columns},
                                               start=first_row):
            yield start, batch
            start += batch.num_rows
            if start > last_row:
                return


# Keys ----------------------------------------------------------------------------------------

def _key_kind(kind: pa.DataType) -> str | None:
    if pa.types.is_integer(kind):
        return "integer"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    return None


def _keys(reader: SourceReader, source: SourceSpec) -> pa.Array:
    """The source's key column, checked: present, integer or string, no nulls, no duplicates."""
    where = f"{source.path.name} (source {source.name})"
    if source.key not in reader.columns:
        raise JobSpecError(f"{where}: key column {source.key!r} is not a column (it has "
                           f"{', '.join(reader.columns[:20])})")
    kind = _key_kind(reader.type_of(source.key))
    if kind is None:
        raise JobSpecError(f"{where}: key column {source.key!r} is {reader.type_of(source.key)}; expected integers "
                           "or strings")
    keys = reader.read_column(source.key)
    keys = keys.cast(pa.int64()) if kind == "integer" else keys.cast(pa.large_string())
    if keys.null_count:
        row = int(np.argmax(np.asarray(keys.is_null())))
        raise JobSpecError(f"{where}: key column {source.key!r} is empty in data row {row + 1}; every row needs a key")
    duplicated = _duplicates(keys)
    if duplicated is not None:
        sample, times, how_many = duplicated
        raise JobSpecError(f"{where}: key {sample!r} appears {times} times in key column {source.key!r} "
                           f"({how_many} duplicated key(s)); keys must be unique")
    return keys


def _duplicates(keys: pa.Array) -> tuple[Any, int, int] | None:
    """The first repeated key (smallest), how often it appears and how many keys repeat; None if
    none does. Integers are sorted with numpy (one copy of the keys), strings hashed by pyarrow."""
    if pa.types.is_integer(keys.type):
        values = np.sort(keys.to_numpy())
        repeats = values[1:][values[1:] == values[:-1]]
        if not len(repeats):
            return None
        sample = repeats[0]
        return int(sample), int(np.count_nonzero(values == sample)), len(np.unique(repeats))
    if len(pc.unique(keys)) == len(keys):
        return None
    counts = pc.value_counts(keys)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    return repeated.field("values")[0].as_py(), repeated.field("counts")[0].as_py(), len(repeated)


@dataclass
class JoinedData:
    """The joined rows: for each output row its row in every source; the labels; each member's
    columns and the column groups. Built by :func:`join_sources`."""

    spec: JobSpec
    readers: dict[str, SourceReader]
    source_rows: dict[str, np.ndarray]
    """Per source, the source row of each output row (int64)."""
    keys: pa.Array
    """The output rows' keys (the primary's, in its order)."""
    labels: np.ndarray | None
    dropped: dict[str, int]
    """With ``missing = "drop"``: per source, the primary rows dropped because it lacks their key."""
    dropped_rows: int = 0
    dropped_sample: dict[str, list[Any]] = field(default_factory=dict)
    members: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    """Per member, its columns in order as (source, column)."""
    groups: list[ColumnGroup] = field(default_factory=list)

    feature_names: tuple[str, ...] = ()
    """No single table of feature names (members read from several sources)."""

    @property
    def rows(self) -> int:
        return len(self.keys)

    def member_features(self) -> dict[str, tuple[str, ...] | None]:
        """Per member, its columns' names as the model sees them (for the compatibility checks)."""
        return {name: tuple(column for _source, column in columns) for name, columns in self.members.items()}

    def member_parts(self) -> dict[str, list[tuple[int, list[int]]]]:
        """Per member, its input as runs of (group, column indexes in the group's files), in order."""
        where = {(g.source, c): (g.index, j) for g in self.groups for j, c in enumerate(g.columns)}
        parts: dict[str, list[tuple[int, list[int]]]] = {}
        for name, columns in self.members.items():
            runs: list[tuple[int, list[int]]] = []
            for column in columns:
                group, index = where[column]
                if runs and runs[-1][0] == group:
                    runs[-1][1].append(index)
                else:
                    runs.append((group, [index]))
            parts[name] = runs
        return parts

    def shard_bounds(self) -> list[tuple[int, int]]:
        per = self.spec.data.resolved_rows_per_shard
        return [(start, min(start + per, self.rows)) for start in range(0, self.rows, per)]

    def summary(self) -> str:
        """One line for ``validate`` and the run's progress: rows, sources, what was dropped."""
        text = (f"{self.rows} rows joined by key from {len(self.readers)} sources "
                f"({', '.join(self.readers)}; primary {self.spec.data.primary}); {len(self.groups)} column groups")
        if self.dropped_rows:
            lacking = "; ".join(f"{n} lack {count} (e.g. {', '.join(map(repr, self.dropped_sample[n]))})"
                                for n, count in self.dropped.items() if count)
            text += f"; dropped {self.dropped_rows} rows whose key another source lacks ({lacking})"
        return text

    def describe(self) -> dict[str, Any]:
        """The join for the summary and the report: rows kept, rows dropped and by which source."""
        return {"summary": self.summary(), "primary": self.spec.data.primary, "rows": self.rows,
                "missing": self.spec.data.missing, "dropped_rows": self.dropped_rows,
                "dropped_by_source": {n: c for n, c in self.dropped.items() if c},
                "dropped_sample_keys": {n: k for n, k in self.dropped_sample.items() if k}}

    def pass_through(self, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
        """The primary source's ``columns`` for the output rows (a Parquet output keeps them, e.g.
        the key): one column at a time read whole, as keys are."""
        primary = self.spec.source_spec(self.spec.data.primary or self.spec.sources[0].name)
        reader = self.readers[primary.name]
        rows = pa.array(self.source_rows[primary.name])
        yield pa.RecordBatch.from_arrays(
            [self.keys if c == primary.key else reader.read_column(c).take(rows) for c in columns], list(columns))

    def write_shards(self, directory: Path | None, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> SourceShards:
        """Write one ``.npy`` file per column group and shard into ``directory`` (None: only check
        the values, as ``validate`` does), checking NaN/inf against the members taking each column."""
        return _write_shards(self, directory, budget_bytes)


@dataclass(frozen=True)
class ColumnGroup:
    """Columns of one source that the same members take: one file per shard holds them."""

    index: int
    source: str
    columns: tuple[str, ...]
    models: frozenset[str]

    def file_name(self, shard: int) -> str:
        return f"{self.source}-g{self.index}-{shard:05d}.npy"


@dataclass(frozen=True)
class ShardFile:
    path: Path
    sha256: str


@dataclass
class SourceShards:
    """The written shard files of a joined job: per (group, shard) its file, and each shard's rows."""

    shard_rows: list[int]
    files: dict[tuple[int, int], ShardFile]
    parts: dict[str, list[tuple[int, list[int]]]]
    """Per member, its input as runs of (group, column indexes), as :meth:`JoinedData.member_parts`."""


def join_sources(spec: JobSpec, estimators: Mapping[str, Any]) -> JoinedData:
    """Read the sources' keys (and the label), align the rows by key, resolve each member's columns
    and cut them into column groups; raise :class:`JobSpecError` (one line) on any problem."""
    joined = align_rows(spec)
    joined.members = resolve_columns(spec, joined.readers, estimators)
    joined.groups = column_groups(spec, joined.members)
    return joined


def align_rows(spec: JobSpec) -> JoinedData:
    """The rows of the join (keys, labels, each source's row per output row), without the members'
    columns (``mesos-ensemble plan`` needs only how many rows there are)."""
    tables = {s.name: SourceReader(s.path, f"{spec.source}: sources[{i}] ({s.name}).path")
               for i, s in enumerate(spec.sources)}
    primary = spec.source_spec(spec.data.primary or spec.sources[0].name)
    keys = {s.name: _keys(tables[s.name], s) for s in spec.sources}
    kinds = {name: "integer" if pa.types.is_integer(k.type) else "string" for name, k in keys.items()}
    for source in spec.sources:
        if kinds[source.name] != kinds[primary.name]:
            raise JobSpecError(f"{spec.source}: sources[{spec.sources.index(source)}] ({source.name}).key "
                               f"{source.key!r} holds {kinds[source.name]}s but the primary source {primary.name}'s "
                               f"key {primary.key!r} holds {kinds[primary.name]}s; keys must have one type")
    primary_keys = keys[primary.name]
    positions: dict[str, np.ndarray] = {}
    keep = np.ones(len(primary_keys), dtype=bool)
    missing: dict[str, np.ndarray] = {}
    for source in spec.sources:
        if source.name == primary.name:
            positions[source.name] = np.arange(len(primary_keys), dtype=np.int64)
            continue
        found = pc.index_in(primary_keys, value_set=keys[source.name])
        absent = np.asarray(found.is_null())
        positions[source.name] = np.asarray(found.fill_null(-1), dtype=np.int64)
        if absent.any():
            missing[source.name] = absent
            keep &= ~absent
    dropped = {name: int(absent.sum()) for name, absent in missing.items()}
    samples = {name: [primary_keys[int(i)].as_py() for i in np.flatnonzero(absent)[:MAX_SAMPLE_KEYS]]
               for name, absent in missing.items()}
    if missing and spec.data.missing == "error":
        name = next(iter(missing))
        raise JobSpecError(f"{spec.source}: source {name} has no row for key {samples[name][0]!r} of the primary "
                           f"source {primary.name} ({dropped[name]} key(s) missing); set [data] missing = \"drop\" "
                           "to drop such rows for every member")
    if not keep.any():
        raise JobSpecError(f"{spec.source}: no key of the primary source {primary.name} is in every source "
                           f"(missing = \"drop\" would drop all {len(primary_keys)} rows)")
    kept = np.flatnonzero(keep) if not keep.all() else None
    source_rows = {name: (rows[kept] if kept is not None else rows) for name, rows in positions.items()}
    labels = None
    if spec.data.label is not None:
        reader = tables[primary.name]
        if spec.data.label not in reader.columns:
            raise JobSpecError(f"{spec.source}: data.label {spec.data.label!r} is not a column of the primary source "
                               f"{primary.name} ({', '.join(reader.columns[:20])})")
        column = reader.read_column(spec.data.label)
        labels = _labels(column.take(pa.array(kept)) if kept is not None else column)
    return JoinedData(spec, tables, source_rows,
                      primary_keys.take(pa.array(kept)) if kept is not None else primary_keys, labels,
                      dropped, int((~keep).sum()), samples)


def _labels(column: pa.Array) -> np.ndarray:
    """Labels as numbers when numeric (whole numbers as integers), else strings (as ``[data]``)."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type):
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
            return values.astype(np.int64)
        return values
    return np.asarray(column.cast(pa.large_string()).to_pylist(), dtype=str)


# Columns -------------------------------------------------------------------------------------

def feature_columns(spec: JobSpec, source: SourceSpec, reader: SourceReader) -> list[str]:
    """The columns of ``source`` a member may take: all but its key and (in the primary) the label."""
    label = spec.data.label if source.name == spec.data.primary else None
    return [c for c in reader.columns if c not in (source.key, label)]


def resolve_columns(spec: JobSpec, tables: Mapping[str, SourceReader],
                    estimators: Mapping[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Per member, its columns in order as (source, column): those the job names, else those it was
    fitted on (``feature_names_in_``, looked up in its sources, or in every source when it names
    none), else every feature column of its one source; each column present and numeric."""
    chosen: dict[str, list[tuple[str, str]]] = {}
    for index, model in enumerate(spec.models):
        where = f"{spec.source}: models[{index}] ({model.name})"
        fitted = getattr(estimators.get(model.name), "feature_names_in_", None)
        fitted_names = [str(f) for f in fitted] if fitted is not None else None
        inputs = model.inputs or ((SourceColumns(spec.sources[0].name),) if len(spec.sources) == 1 else ())
        if not inputs:
            chosen[model.name] = _from_fitted(spec, tables, model, where, fitted_names)
        else:
            columns: list[tuple[str, str]] = []
            for wanted in inputs:
                source = spec.source_spec(wanted.source)
                allowed = feature_columns(spec, source, tables[source.name])
                field_name = "features" if len(model.inputs) == 1 and model.features else f"columns.{source.name}"
                if wanted.columns is not None:
                    unknown = [c for c in wanted.columns if c not in allowed]
                    if unknown:
                        raise JobSpecError(f"{where}.{field_name} names {unknown[:10]}, which are not feature columns "
                                           f"of source {source.name} ({_listing(allowed)})")
                    columns += [(source.name, c) for c in wanted.columns]
                elif fitted_names is not None and len(inputs) == 1 and set(fitted_names) <= set(allowed):
                    columns += [(source.name, c) for c in fitted_names]
                else:
                    columns += [(source.name, c) for c in allowed]
            chosen[model.name] = columns
        for source_name, column in chosen[model.name]:
            kind = tables[source_name].type_of(column)
            if not readers.is_numeric(kind):
                raise JobSpecError(f"{where} takes column {column!r} of source {source_name}, which holds {kind}; "
                                   "expected numbers (integers, floats or booleans)")
    return chosen


def _from_fitted(spec: JobSpec, tables: Mapping[str, SourceReader], model: ModelSpec, where: str,
                 fitted: list[str] | None) -> list[tuple[str, str]]:
    """A member that names no source: each column it was fitted on, found in exactly one source."""
    if fitted is None:
        raise JobSpecError(f"{where} names no source and was not fitted on named columns (no feature_names_in_); "
                           "give it source = \"...\" or columns = { source = [\"column\", ...] }")
    owners = {s.name: set(feature_columns(spec, s, tables[s.name])) for s in spec.sources}
    columns = []
    for column in fitted:
        holders = [name for name, names in owners.items() if column in names]
        if len(holders) != 1:
            problem = "is in no source" if not holders else f"is in several sources ({', '.join(holders)})"
            raise JobSpecError(f"{where} names no source, and its fitted column {column!r} {problem}; give it "
                               "columns = { source = [\"column\", ...] }")
        columns.append((holders[0], column))
    return columns


def _listing(names: Sequence[str]) -> str:
    return ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")


def column_groups(spec: JobSpec, members: Mapping[str, list[tuple[str, str]]]) -> list[ColumnGroup]:
    """The columns taken, grouped by source and by the set of members taking them (each group in
    its source's column order): a member downloads exactly the groups holding its columns."""
    takers: dict[tuple[str, str], set[str]] = {}
    for model, taken in members.items():
        for pair in taken:
            takers.setdefault(pair, set()).add(model)
    groups: dict[tuple[str, frozenset[str]], list[str]] = {}
    for source in spec.sources:
        for (name, column), models in takers.items():
            if name == source.name:
                groups.setdefault((name, frozenset(models)), []).append(column)
    order = {s.name: i for i, s in enumerate(spec.sources)}
    keyed = sorted(groups.items(), key=lambda item: (order[item[0][0]], sorted(item[0][1])))
    return [ColumnGroup(i, source, tuple(columns), models) for i, ((source, models), columns) in enumerate(keyed)]


# Shards --------------------------------------------------------------------------------------

def _write_shards(joined: JoinedData, directory: Path | None, budget_bytes: int) -> SourceShards:
    bounds = joined.shard_bounds()
    per = joined.spec.data.resolved_rows_per_shard
    width = sum(len(g.columns) for g in joined.groups) or 1
    wave_shards = max(1, budget_bytes // (8 * width * per))
    files: dict[tuple[int, int], ShardFile] = {}
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    for first in range(0, len(bounds), wave_shards):
        wave = bounds[first:first + wave_shards]
        start, stop = wave[0][0], wave[-1][1]
        arrays = {g.index: np.empty((stop - start, len(g.columns)), dtype=np.float64) for g in joined.groups}
        for source in joined.spec.sources:
            groups = [g for g in joined.groups if g.source == source.name]
            if groups:
                _gather(joined, source, groups, start, stop, arrays)
        if directory is None:
            continue
        for offset, (shard_start, shard_stop) in enumerate(wave):
            for group in joined.groups:
                rows = arrays[group.index][shard_start - start:shard_stop - start]
                files[(group.index, first + offset)] = _save(directory / group.file_name(first + offset), rows)
    return SourceShards([b - a for a, b in bounds], files, joined.member_parts())


def _gather(joined: JoinedData, source: SourceSpec, groups: list[ColumnGroup], start: int, stop: int,
            arrays: dict[int, np.ndarray]) -> None:
    """Fill output rows ``[start, stop)`` of ``groups`` (all of ``source``) from one read of the
    source's blocks holding them, checking each value a member takes."""
    wanted = joined.source_rows[source.name][start:stop]
    order = np.argsort(wanted, kind="stable")
    sorted_rows = wanted[order]
    columns = [c for g in groups for c in g.columns]

    for block_start, table in joined.readers[source.name].blocks(columns, int(sorted_rows[0]), int(sorted_rows[-1])):
        lo, hi = np.searchsorted(sorted_rows, [block_start, block_start + table.num_rows])
        if lo == hi:
            continue
        local = sorted_rows[lo:hi] - block_start
        targets = order[lo:hi]
        taken = table.take(pa.array(local))
        for group in groups:
            values = readers.to_float64(taken, group.columns)
            for j, column in enumerate(group.columns):
                _check_finite(joined, source, column, group, values[:, j], local + block_start)
            arrays[group.index][targets] = values


def _check_finite(joined: JoinedData, source: SourceSpec, column: str, group: ColumnGroup, values: np.ndarray,
                  rows: np.ndarray) -> None:
    """No member gets inf, nor NaN (a missing value) unless every member taking it allows NaN."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    spec = joined.spec
    infinite = np.isinf(values)
    refusing = [(i, m) for i, m in enumerate(spec.models) if m.name in group.models and not m.allow_nan]
    if not infinite.any() and not refusing:
        return
    at = int(np.argmax(infinite)) if infinite.any() else int(np.argmax(bad))
    row = int(rows[at])
    key = joined.readers[source.name].read_column(source.key)[row].as_py()
    where = f"{source.path.name} (source {source.name}): column {column!r}, data row {row + 1} (key {key!r})"
    taker = next((i, m) for i, m in enumerate(spec.models) if m.name in group.models)
    if infinite.any():
        raise JobSpecError(f"{where}: {values[at]} is not a finite number (models[{taker[0]}] ({taker[1].name}) "
                           "takes this column; inf is never accepted)")
    index, model = refusing[0]
    raise JobSpecError(f"{where}: missing value (NaN), and models[{index}] ({model.name}) takes this column without "
                       "allow_nan = true; fill the value in, or set allow_nan = true on every model taking it")


def _save(path: Path, rows: np.ndarray) -> ShardFile:
    """Write ``rows`` as a ``.npy`` file (as ``np.save`` would) and return it with its sha256."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(rows), allow_pickle=False)
    data = buffer.getvalue()
    path.write_bytes(data)
    return ShardFile(path, hashlib.sha256(data).hexdigest())
