"""executor.npycodec: the bytes of np.save and the arrays of np.load, headers cached."""

from __future__ import annotations

import io

import numpy as np
import pytest

from executor import npycodec


def saved(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


ARRAYS = [
    np.arange(12, dtype=np.float64).reshape(4, 3) / 7,
    np.array([[1.5, -0.0, np.inf]]),
    np.arange(5, dtype=np.int64),
    np.array(["setosa", "virginica"]),
    np.array([True, False]),
    np.ones((0, 20)),
    np.asfortranarray(np.arange(6.0).reshape(2, 3)),  # Fortran order: numpy's own path
    np.arange(20.0).reshape(4, 5)[:, 1:3],  # not contiguous
    np.float64(3.25).reshape(()),
    np.arange(6, dtype=">f8").reshape(3, 2),  # big-endian
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
def test_encode_is_np_save_and_decode_is_np_load_twice(array):
    for _ in range(2):  # the second time from the caches
        body = npycodec.encode(array)
        assert body == saved(array)
        for slow in (npycodec.np_load, npycodec.read_array):
            back = npycodec.decode(body, slow)
            expected = np.load(io.BytesIO(body), allow_pickle=False)
            assert back.dtype == expected.dtype and back.shape == expected.shape
            assert back.tobytes() == expected.tobytes()
            assert back.flags.writeable


def test_a_pickle_is_refused_as_numpy_refuses_it():
    body = io.BytesIO()
    np.save(body, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for _ in range(2):
        with pytest.raises(ValueError, match="allow_pickle"):
            npycodec.decode(body.getvalue())
    with pytest.raises(ValueError, match="allow_pickle"):
        npycodec.encode(np.array([{"a": 1}], dtype=object))


def test_a_truncated_or_padded_body_is_numpy_s_error_even_with_its_header_known():
    body = npycodec.encode(np.ones((3, 4)))
    npycodec.decode(body)  # the header is known from now on
    with pytest.raises(ValueError):
        npycodec.decode(body[:-8])
    assert npycodec.decode(body + b"\0" * 8).shape == (3, 4)  # numpy reads what the header says


def test_garbage_goes_to_the_slow_reader():
    with pytest.raises(ValueError):
        npycodec.decode(b"not an npy at all", npycodec.read_array)
    bad_header = b"\x93NUMPY\x01\x00\x04\x00{{{{"
    with pytest.raises(Exception) as numpy_s:
        np.load(io.BytesIO(bad_header), allow_pickle=False)
    with pytest.raises(numpy_s.type):
        npycodec.decode(bad_header)
