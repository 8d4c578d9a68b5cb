"""Text shards (``executor.textshard``): UTF-8 bytes and offsets as two plain ``.npy`` arrays in
one file, read back as the same strings; a file that is not one is named, never half-read."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from executor.textshard import (NotATextShard, decode_text, encode_parts, from_strings, map_text_shard,
                                read_text_shard, text_shard_bytes)

DOCS = ["plain words", "", "café naïve ☃ 😀", "ends in NUL\x00", "\x00 starts with one", " spaces  "]


def write(tmp_path: Path, blob: bytes) -> Path:
    path = tmp_path / "shard.npy"
    path.write_bytes(blob)
    return path


def test_the_strings_come_back_exactly(tmp_path: Path) -> None:
    rows = read_text_shard(write(tmp_path, text_shard_bytes(DOCS)))
    assert rows.dtype == object and rows.ndim == 1 and rows.tolist() == DOCS
    assert all(type(row) is str for row in rows)
    assert rows[3].endswith("\x00")  # a fixed-width <U array dropped trailing NULs
    assert read_text_shard(write(tmp_path, text_shard_bytes([]))).tolist() == []


def test_numpy_alone_reads_the_two_arrays_without_pickle(tmp_path: Path) -> None:
    blob = text_shard_bytes(DOCS)
    handle = io.BytesIO(blob)
    offsets, data = np.load(handle, allow_pickle=False), np.load(handle, allow_pickle=False)
    assert handle.read() == b""
    assert data.tobytes() == "".join(DOCS).encode()
    assert [data[a:b].tobytes().decode() for a, b in zip(offsets[:-1], offsets[1:])] == DOCS
    assert len(blob) < 4 * sum(len(d) for d in DOCS) + 512  # UTF-8, not 4 bytes per padded character


def test_it_is_smaller_than_fixed_width_unicode() -> None:
    docs = ["short"] * 99 + ["a much longer document " * 20]
    assert len(text_shard_bytes(docs)) * 7 < np.asarray(docs).nbytes


def _damaged(offsets: list[int], data: bytes) -> bytes:
    """A text shard's bytes whose offsets are given as they are (not checked as encode_parts does)."""
    arrays = [np.asarray(offsets, dtype=np.int64), np.frombuffer(data, dtype=np.uint8)]
    buffer = io.BytesIO()
    for array in arrays:
        np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.mark.parametrize("blob, message", [
    (b"", "cannot map it"),
    (b"not a numpy file at all", r"no \.npy \(version 1\.0\) header for the offsets at byte 0"),
    (_damaged([0, 3], b"abcdef"), "the offsets do not run from 0 to the 6 bytes"),
    (_damaged([0, 4, 2, 6], b"abcdef"), "without decreasing"),
    (_damaged([], b""), r"no offsets"),
    (text_shard_bytes(["abc", "def"])[:-1], "the file has 285 bytes, its arrays say 286"),  # cut short
    (text_shard_bytes(["abc"]) + b"x", "the file has 276 bytes, its arrays say 275"),
    (text_shard_bytes(["abc"])[:140], "2 offsets do not fit the file's 140 bytes"),
])
def test_a_damaged_file_is_named(tmp_path: Path, blob: bytes, message: str) -> None:
    with pytest.raises(NotATextShard, match=message):
        read_text_shard(write(tmp_path, blob))


def test_bytes_that_are_not_utf8_name_the_row(tmp_path: Path) -> None:
    raw = map_text_shard(write(tmp_path, _damaged([0, 2, 4], b"ok\xff\xfe")))
    with pytest.raises(NotATextShard, match=r"row 1 is not UTF-8 \(invalid start byte\)"):
        decode_text(raw)


def test_offsets_must_span_the_bytes_when_written() -> None:
    offsets, data = from_strings(["ab", "c"])
    assert offsets.tolist() == [0, 2, 3]
    with pytest.raises(ValueError, match="offsets must run from 0 to 3"):
        encode_parts(offsets[:-1], data)
