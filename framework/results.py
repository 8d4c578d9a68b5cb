"""A finished task's result: the envelope in its TASK_FINISHED data, the output array it names
(inline, or uploaded to the artifact server) checked against its sha256, and its measured usage;
and the job's Parquet output, written from the integrated result chunk by chunk."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from executor import npycodec
from executor.protocol import ResultEnvelope, TaskUsage, npy_to_array, sha256_hex
from framework import atomic
from framework.artifacts import ArtifactServer
from framework.readers import rebatch


def decode_result(server: ArtifactServer, task_id: str,
                  data_b64: str | ResultEnvelope | None) -> tuple[np.ndarray, TaskUsage | None]:
    """Turn a terminal update's data into the task's output array (checking its sha256) and
    what the task cost, as its executor measured it."""
    decoded = decode_result_npy(server, task_id, data_b64)
    return decoded.output, decoded.usage


@dataclass(frozen=True)
class DecodedResult:
    """A finished task's output, its ``.npy`` bytes and their (checked) sha256, and its usage."""

    output: np.ndarray
    npy: bytes
    sha256: str
    usage: TaskUsage | None


def decode_result_npy(server: ArtifactServer, task_id: str, data_b64: str | ResultEnvelope | None) -> DecodedResult:
    """:func:`decode_result`, keeping the checked ``.npy`` bytes and sha256 (the journal stores
    those bytes as they are: no second encoding, no second checksum).  ``data_b64``: the update's
    base64 envelope, or a bundled item's envelope already decoded (``translator.fan_out``)."""
    if not data_b64:
        raise ValueError("TASK_FINISHED carried no result data")
    envelope = (data_b64 if isinstance(data_b64, ResultEnvelope)
                else ResultEnvelope.from_json(base64.b64decode(data_b64)))
    if envelope.kind == "inline":
        npy = base64.b64decode(envelope.npy_b64 or "")
    else:
        path = server.result_path(task_id)
        if not path.is_file():
            raise ValueError(f"uploaded result for {task_id} is missing")
        npy = path.read_bytes()
        path.unlink()
    if sha256_hex(npy) != envelope.sha256 or len(npy) != envelope.nbytes:
        raise ValueError(f"result of {task_id} failed its sha256/size check")
    return DecodedResult(read_npy(npy), npy, envelope.sha256, envelope.usage)


def read_npy(npy: bytes) -> np.ndarray:
    """The array of ``.npy`` bytes, as ``np.load`` gives it (a writable copy, never a pickle),
    with the header parsed once per distinct header (:mod:`executor.npycodec`)."""
    return npycodec.decode(npy, npy_to_array)


PARQUET_CHUNK_ROWS = 65536


def write_parquet_output(records: np.ndarray, path: Path, pass_through: Iterable[pa.RecordBatch] | None = None,
                         chunk_rows: int = PARQUET_CHUNK_ROWS) -> None:
    """Write the structured ``records`` (the integrated output, memory-mapped) as a Parquet file,
    ``pass_through`` (the data's columns the job keeps, streamed in row order) first, chunk by
    chunk (one row group each); atomically: a temporary sibling renamed over ``path``, so an earlier
    output is untouched on failure (:mod:`framework.atomic`)."""
    names = list(records.dtype.names or ())
    kept = rebatch(pass_through, chunk_rows) if pass_through is not None else None
    with atomic.replacing(path, ".partial.parquet") as temporary:
        writer: pq.ParquetWriter | None = None
        try:
            for start in range(0, len(records), chunk_rows):
                chunk = np.asarray(records[start:start + chunk_rows])
                columns = {name: pa.array(chunk[name]) for name in names}
                extra = next(kept, None) if kept is not None else None
                if extra is not None:
                    if extra.num_rows != len(chunk):
                        raise ValueError(f"pass-through columns have {extra.num_rows} rows at row {start}, "
                                         f"the output {len(chunk)}")
                    columns = {**{n: extra.column(n) for n in extra.column_names}, **columns}
                table = pa.table(columns)
                if writer is None:
                    writer = pq.ParquetWriter(temporary, table.schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
