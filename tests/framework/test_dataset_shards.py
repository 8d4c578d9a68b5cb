"""Shards are views of the data set whose bytes are exactly what ``np.save`` writes."""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from executor.protocol import array_to_npy, npy_to_array
from framework.artifacts import ArtifactServer
from framework.dataset import cut_shards


@pytest.mark.parametrize(("rows", "columns", "per_shard"), [(10, 3, 4), (7, 1, 7), (1000, 20, 333), (5, 2, 100)])
def test_shards_cover_the_rows_with_np_save_bytes(rows: int, columns: int, per_shard: int) -> None:
    features = np.random.default_rng(rows).normal(size=(rows, columns))
    shards = cut_shards(features, per_shard)
    assert [s.start for s in shards] == list(range(0, rows, per_shard))
    assert sum(s.rows for s in shards) == rows and shards[-1].stop == rows
    for shard in shards:
        npy = b"".join(bytes(part) for part in shard.npy_parts)
        assert npy == array_to_npy(features[shard.start:shard.stop])
        assert shard.sha256 == hashlib.sha256(npy).hexdigest()
        assert np.shares_memory(np.frombuffer(shard.npy_parts[1], dtype=features.dtype), features)  # no copy


def test_server_hands_out_a_shard_from_memory(tmp_path: Path) -> None:
    features = np.arange(60, dtype=np.float64).reshape(20, 3)
    shard = cut_shards(features, 8)[1]
    server = ArtifactServer(tmp_path / "results", bind="127.0.0.1").start()
    try:
        url = server.publish_buffer("data-00001.npy", shard.npy_parts)
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
            assert response.headers["Content-Length"] == str(len(body))
    finally:
        server.stop()
    assert hashlib.sha256(body).hexdigest() == shard.sha256
    np.testing.assert_array_equal(npy_to_array(body), features[8:16])


def test_spilled_shards_are_written_beside_the_reading_in_order_and_exact(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``spill_shards`` checksums and writes each shard file on threads of its own while the next
    shard is read and scanned (the cutting is what the first launch waits for); the shards come
    back in order, each file exactly ``np.save``'s bytes of its rows, its checksum theirs, and
    NaN/inf found wherever the shard that holds it was written."""
    import threading

    from framework import dataset
    from framework.jobspec import DataSpec

    features = np.random.default_rng(0).normal(size=(1000, 4))
    features[777, 2] = np.nan
    np.save(tmp_path / "data.npy", features)
    writers: list[str] = []
    real = dataset.write_shard

    def write_shard(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        writers.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset, "write_shard", write_shard)
    spec = DataSpec(path=tmp_path / "data.npy", rows_per_shard=90)
    spilled = dataset.spill_shards(spec, ("x0", "x1", "x2", "x3"), tmp_path / "shards")
    assert writers and all(name.startswith("spill") for name in writers)
    assert [s.index for s in spilled.shards] == list(range(12)) and spilled.rows == 1000
    for shard in spilled.shards:
        assert shard.path is not None
        npy = shard.path.read_bytes()
        assert npy == array_to_npy(features[shard.start:shard.stop])
        assert shard.sha256 == hashlib.sha256(npy).hexdigest()
    assert [(p.column, p.first_nan) for p in spilled.non_finite] == [("x2", 777)]
