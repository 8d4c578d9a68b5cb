"""The framework's data path holds shards, not the data set: cutting a file 20 times larger than
another (and far larger than its shards) raises the process's peak memory by no more than about
what cutting the small one does. Measured in a child process (its VmHWM), no wall-clock limits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

COLUMNS = 10
GROUP_ROWS = 10_000
ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import json, sys
from pathlib import Path

from framework.dataset import describe_data, spill_shards
from framework.jobspec import DataSpec


def peak_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


spec = DataSpec(path=Path(sys.argv[1]), label="y", rows_per_shard=int(sys.argv[2]))
info = describe_data(spec)
before = peak_mb()
data = spill_shards(spec, info.feature_names, Path(sys.argv[3]))
print(json.dumps({"rows": data.rows, "shards": len(data.shards), "growth_mb": peak_mb() - before}))
"""


def write_parquet(path: Path, rows: int) -> None:
    rng = np.random.default_rng(rows)
    schema = pa.schema([(f"f{j}", pa.float64()) for j in range(COLUMNS)] + [("y", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for _ in range(0, rows, GROUP_ROWS):
            writer.write_table(pa.table([*(rng.normal(size=GROUP_ROWS) for _ in range(COLUMNS)),
                                         rng.integers(0, 2, GROUP_ROWS)], schema=schema))


def write_csv(path: Path, rows: int) -> None:
    rng = np.random.default_rng(rows)
    schema = pa.schema([(f"f{j}", pa.float64()) for j in range(COLUMNS)] + [("y", pa.int64())])
    with pa_csv.CSVWriter(path, schema) as writer:
        for _ in range(0, rows, GROUP_ROWS):
            writer.write_table(pa.table([*(np.round(rng.normal(size=GROUP_ROWS), 6) for _ in range(COLUMNS)),
                                         rng.integers(0, 2, GROUP_ROWS)], schema=schema))


def growth(path: Path, shard_rows: int, work: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", CHILD, str(path), str(shard_rows), str(work)], env=env,
                            capture_output=True, text=True, check=True, timeout=600)
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def check_bounded(tmp_path: Path, kind: str, small_rows: int, large_rows: int) -> None:
    write = write_parquet if kind == "parquet" else write_csv
    small, large = tmp_path / f"small.{kind}", tmp_path / f"large.{kind}"
    write(small, small_rows)
    write(large, large_rows)
    measured_small = growth(small, 5_000, tmp_path / "small-shards")
    measured_large = growth(large, 5_000, tmp_path / "large-shards")
    assert measured_large["rows"] == large_rows and measured_large["shards"] == large_rows // 5_000
    data_mb = large_rows * (COLUMNS + 1) * 8 / 2**20
    # Bounded by what the small file needs (a row group / CSV blocks and a shard), not by the data.
    assert measured_large["growth_mb"] <= 2 * measured_small["growth_mb"] + 8, (measured_small, measured_large)
    assert measured_large["growth_mb"] < data_mb / 2, (measured_large, data_mb)


def test_parquet_peak_memory_does_not_grow_with_the_data(tmp_path: Path) -> None:
    """400,000 rows (34 MB as float64, 80 shards of 400 kB) against 20,000, row groups of 10,000."""
    check_bounded(tmp_path, "parquet", 2 * GROUP_ROWS, 40 * GROUP_ROWS)


@pytest.mark.faults  # slow: a CSV must outgrow pyarrow's read-ahead (~32 blocks of 1 MB) to show it
def test_csv_peak_memory_does_not_grow_with_the_data(tmp_path: Path) -> None:
    """1,600,000 rows (134 MB as float64, 180 MB of text) against 400,000 (45 MB of text)."""
    check_bounded(tmp_path, "csv", 40 * GROUP_ROWS, 160 * GROUP_ROWS)
