"""Text shards: one string column's rows as UTF-8 bytes and their offsets, in one file of two
plain ``.npy`` arrays, one after the other.

The file holds an ``int64`` array of ``n + 1`` offsets (the first 0, the last the byte count,
never decreasing: row ``i`` is bytes ``offsets[i]:offsets[i + 1]``), then a ``uint8`` array of
the rows' UTF-8 bytes, each a ``.npy`` of format version 1.0 (``np.load`` of an open file reads
them in turn, with ``allow_pickle=False``).  It is Arrow's layout of a string column, in numpy's
own container: no pickle, nothing but numpy needed to read it, and about a seventh of the
fixed-width ``<U{n}`` array the shards were before (4 bytes per character, padded to the
shard's longest document).  The executor memory-maps the file's bytes and decodes the rows to
``str`` where the member runs (:func:`decode_text`): a 1-D object array of ``str``, the same
strings a list of ``str`` gives scikit-learn's vectorizers (trailing NUL characters included,
which ``<U`` dropped).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterable

import numpy as np

_MAGIC_1_0 = b"\x93NUMPY\x01\x00"
_OFFSETS = np.dtype("<i8")
_BYTES = np.dtype("|u1")


class NotATextShard(ValueError):
    """A file that is not two ``.npy`` arrays laid out as a text shard (or whose bytes are not
    UTF-8): the message says what is wrong."""


def npy_header(array: np.ndarray) -> bytes:
    """The ``.npy`` (version 1.0) header ``np.save`` writes before ``array``'s bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    return header.getvalue()


def encode_parts(offsets: np.ndarray, data: np.ndarray) -> list[bytes | memoryview]:
    """A text shard's bytes, in order (headers and the arrays' memory, not copied): ``offsets``
    (``n + 1`` of them, from 0 to ``len(data)``) and ``data``, the rows' UTF-8 bytes."""
    offsets = np.ascontiguousarray(offsets, dtype=_OFFSETS)
    data = np.ascontiguousarray(data, dtype=_BYTES)
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(data):
        raise ValueError(f"text shard offsets must run from 0 to {len(data)}, got {offsets[:1]}...{offsets[-1:]}")
    return [npy_header(offsets), memoryview(offsets.view(np.uint8).data), npy_header(data),
            memoryview(data.data) if len(data) else memoryview(b"")]


def from_strings(documents: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """``documents`` as (offsets, UTF-8 bytes), the two arrays of a text shard."""
    encoded = [document.encode("utf-8") for document in documents]
    offsets = np.zeros(len(encoded) + 1, dtype=_OFFSETS)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return offsets, np.frombuffer(b"".join(encoded), dtype=_BYTES)


def text_shard_bytes(documents: Iterable[str]) -> bytes:
    """A whole text shard file's bytes for ``documents``."""
    return b"".join(bytes(part) for part in encode_parts(*from_strings(documents)))


def _header(raw: np.ndarray, start: int, expected: np.dtype[Any], what: str) -> tuple[int, int]:
    """The 1-D ``expected`` array whose ``.npy`` header starts at byte ``start`` of ``raw``: where
    its data starts and how many items it has."""
    head = bytes(raw[start:start + 10])
    if len(head) < 10 or head[:8] != _MAGIC_1_0:
        raise NotATextShard(f"no .npy (version 1.0) header for the {what} at byte {start}")
    end = start + 10 + int.from_bytes(head[8:10], "little")
    try:
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(io.BytesIO(bytes(raw[start + 8:end])))
    except Exception as error:  # noqa: BLE001 - numpy's own words for a bad header
        raise NotATextShard(f"the {what}' .npy header is not valid: {error}") from error
    if dtype != expected or len(shape) != 1 or fortran:
        raise NotATextShard(f"the {what} are a {dtype} array of shape {shape}, expected a 1-D {expected} array")
    return end, int(shape[0])


def text_parts(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A text shard file's bytes (``raw``, a 1-D ``uint8`` array, e.g. the file memory-mapped) as
    its offsets and UTF-8 bytes (views of ``raw``), checked: two ``.npy`` arrays of the right
    types and sizes filling the file, offsets from 0 to the byte count, never decreasing."""
    if raw.dtype != _BYTES or raw.ndim != 1:
        raise NotATextShard(f"expected a text shard's bytes, got a {raw.dtype} array of shape {raw.shape}")
    start, count = _header(raw, 0, _OFFSETS, "offsets")
    data_header = start + count * _OFFSETS.itemsize
    if count < 1 or data_header > len(raw):
        raise NotATextShard(f"{count} offsets do not fit the file's {len(raw)} bytes" if count
                            else "no offsets (a text shard has one more than its rows)")
    offsets = np.frombuffer(raw, dtype=_OFFSETS, count=count, offset=start)
    start, size = _header(raw, data_header, _BYTES, "bytes")
    if start + size != len(raw):
        raise NotATextShard(f"the file has {len(raw)} bytes, its arrays say {start + size}")
    if offsets[0] != 0 or offsets[-1] != size or (count > 1 and bool((np.diff(offsets) < 0).any())):
        raise NotATextShard(f"the offsets do not run from 0 to the {size} bytes without decreasing")
    return offsets, raw[start:]


def map_text_shard(path: Path | str) -> np.memmap:
    """A text shard file memory-mapped as its bytes (read-only), checked by :func:`text_parts`."""
    try:
        raw = np.memmap(path, dtype=np.uint8, mode="r")
    except ValueError as error:  # an empty file cannot be mapped
        raise NotATextShard(f"cannot map it: {error}") from error
    text_parts(raw)
    return raw


def decode_text(raw: np.ndarray) -> np.ndarray:
    """A text shard's rows (its bytes, ``raw``) as a 1-D object array of ``str``."""
    offsets, data = text_parts(raw)
    buffer, bounds = data.tobytes(), offsets.tolist()
    rows = np.empty(len(bounds) - 1, dtype=object)
    try:
        rows[:] = [buffer[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:])]
    except UnicodeDecodeError as error:
        row = next(i for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])) if not _utf8(buffer[a:b]))
        raise NotATextShard(f"row {row} is not UTF-8 ({error.reason})") from error
    return rows


def _utf8(chunk: bytes) -> bool:
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def read_text_shard(path: Path | str) -> np.ndarray:
    """A text shard file's rows as a 1-D object array of ``str``."""
    return decode_text(map_text_shard(path))
