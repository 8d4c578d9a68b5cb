"""``.npy`` bytes for serving's hops, without re-parsing the same header on every call.

A gateway and its replicas exchange small ``.npy`` bodies many times a second, always of a few
shapes.  ``np.save``/``np.load`` spend most of a small array's time on the header (formatting
it, and reading it back with ``ast.literal_eval``); :func:`encode` and :func:`decode` keep the
headers they have seen (a bounded cache) and otherwise copy the data as ``np.save`` and
``np.load`` do.  The results are those of ``np.save(..., allow_pickle=False)`` and
``np.load(..., allow_pickle=False)``, byte for byte and value for value; anything off the fast
path (object arrays, Fortran order, format versions 2 and 3, a body of the wrong length) goes
through numpy itself, which says what is wrong exactly as before.
"""

from __future__ import annotations

import io
import math
from typing import Any, Callable

import numpy as np

from executor.protocol import array_to_npy, npy_to_array

_MAGIC_1_0 = b"\x93NUMPY\x01\x00"
_CACHE_SIZE = 512
"""Headers kept per direction; a cache that fills is emptied (a flood of shapes costs only speed)."""

_written: dict[tuple[str, tuple[int, ...]], bytes] = {}
_read: dict[bytes, tuple[tuple[int, ...], np.dtype[Any]]] = {}


def encode(array: np.ndarray) -> bytes:
    """``np.save(buffer, array, allow_pickle=False)``'s bytes (ValueError for an object array)."""
    array = np.asanyarray(array)
    dtype = array.dtype
    if dtype.hasobject or dtype.names is not None or dtype.kind == "V" or not array.flags.c_contiguous:
        return array_to_npy(array)
    key = (dtype.str, array.shape)
    header = _written.get(key)
    if header is None:
        whole = array_to_npy(array)
        if len(_written) >= _CACHE_SIZE:
            _written.clear()
        _written[key] = whole[:len(whole) - array.nbytes]
        return whole
    return header + array.tobytes()


def np_load(body: bytes) -> Any:
    """``np.load(io.BytesIO(body), allow_pickle=False)``: an array, or an archive for an ``.npz``."""
    return npy_to_array(body)


def read_array(body: bytes) -> np.ndarray:
    """``np.lib.format.read_array(io.BytesIO(body), allow_pickle=False)``: a ``.npy`` array only."""
    return np.lib.format.read_array(io.BytesIO(body), allow_pickle=False)


def decode(body: bytes, slow: Callable[[bytes], Any] = np_load) -> Any:
    """What ``slow(body)`` (:func:`np_load` or :func:`read_array`) gives for ``body``: for a
    plain ``.npy`` array, a new writable array equal to numpy's, read without re-parsing a
    header seen before; anything else goes to ``slow``, which reads it or raises numpy's own
    error (a ValueError naming ``allow_pickle`` for pickles)."""
    _load = slow
    if len(body) < 10 or body[:8] != _MAGIC_1_0:
        return _load(body)
    start = 10 + int.from_bytes(body[8:10], "little")
    header = bytes(body[10:start])
    known = _read.get(header)
    if known is None:
        try:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(io.BytesIO(body[8:start]))
        except Exception:  # noqa: BLE001  (numpy says what is wrong, below)
            return _load(body)
        if fortran or dtype.hasobject or dtype.names is not None or dtype.kind == "V":
            return _load(body)
        known = (tuple(shape), dtype)
        if len(_read) >= _CACHE_SIZE:
            _read.clear()
        _read[header] = known
    shape, dtype = known
    count = math.prod(shape)
    if len(body) - start != count * dtype.itemsize:
        return _load(body)  # truncated or padded: numpy's error (or its reading) as before
    return np.frombuffer(body, dtype=dtype, count=count, offset=start).reshape(shape).copy()
