"""Reading results' ``.npy`` bytes: the cached-header path gives exactly what ``np.load`` gives."""

from __future__ import annotations

import numpy as np
import pytest

from executor.protocol import array_to_npy, npy_to_array
from framework.results import read_npy

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("array", [
    RNG.random((250, 2)), np.asfortranarray(RNG.random((5, 3))), RNG.integers(0, 9, 7), np.array(3.5),
    RNG.random((0, 2)), RNG.random((4, 3)).astype(">f4"), np.array([True, False]), np.array([np.nan, -0.0]),
], ids=["proba", "fortran", "int", "scalar", "empty", "big-endian", "bool", "nan"])
def test_read_npy_equals_np_load_bit_for_bit_first_and_cached(array: np.ndarray) -> None:
    npy = array_to_npy(array)
    for _ in range(2):  # the first read parses the header, the second uses the cached one
        got, expected = read_npy(npy), npy_to_array(npy)
        assert (got.dtype, got.shape, got.tobytes()) == (expected.dtype, expected.shape, expected.tobytes())
        assert got.flags.writeable and got.flags.f_contiguous == expected.flags.f_contiguous


def test_read_npy_refuses_bytes_that_do_not_match_their_cached_header() -> None:
    npy = array_to_npy(RNG.random((3, 2)))
    read_npy(npy)
    with pytest.raises(ValueError, match="expected 48 bytes got 40"):  # numpy's own error
        read_npy(npy[:-8])
