"""Data benchmark (issue 14): the same ensemble over the same rows stored as .npy, Parquet and
CSV, run end to end on the embedded cluster, side by side with the pre-issue-14 CSV path and a
load-it-all baseline; rows per second and the framework process's peak resident memory.

    .venv/bin/python bench/data_bench.py [--rows 300000] [--columns 30] [--shard-rows 50000] [--factor 4]

Every measurement runs in a child process of its own, whose peak memory (VmHWM) it reports:

* ``ingest``: reading a file and cutting it into shard files (``describe_data`` + ``spill_shards``),
  what the framework does before launching; against ``old csv``: the pre-issue-14 reader (the
  whole CSV parsed to strings by ``np.loadtxt``, then to floats, as ``load_dataset`` did).
  Target: CSV ingestion >= 5x the old rows/s.
* ``job``: ``mesos-ensemble run`` of a two-member ensemble (linear + logistic, cheap, so data
  handling dominates) on the embedded cluster, over .npy, Parquet and CSV. Target: Parquet end to
  end within 1.1x of .npy.
* memory: the Parquet job over ``--rows`` and ``--factor`` times as many rows; target: the
  framework's peak independent of the data's size (within 2x of the shards in flight).
* ``load-all baseline``: pyarrow ``read_table`` of the whole Parquet file to numpy, then joblib
  (processes) predicting each shard and averaging, as a one-process user would (pandas is not a
  dependency of this project; pyarrow + numpy stand in for ``read_parquet``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from sklearn.linear_model import LinearRegression, LogisticRegression

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 50_000

PEAK = """
def _peak_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
"""

INGEST = PEAK + """
import json, sys, time
from pathlib import Path
from framework.dataset import describe_data, spill_shards
from framework.jobspec import DataSpec
spec = DataSpec(path=Path(sys.argv[1]), label="y", rows_per_shard=int(sys.argv[2]))
start = time.perf_counter()
info = describe_data(spec)
data = spill_shards(spec, info.feature_names, Path(sys.argv[3]))
print(json.dumps({"seconds": time.perf_counter() - start, "rows": data.rows, "peak_mb": _peak_mb()}))
"""

OLD_CSV = PEAK + """
import json, sys, time
import numpy as np
start = time.perf_counter()
path = sys.argv[1]
text = open(path, encoding="utf-8-sig").read()  # the old reader decoded the whole file first (a check)
raw = np.loadtxt(path, delimiter=",", skiprows=1, dtype=str, ndmin=2, encoding="utf-8-sig")
features = np.empty((raw.shape[0], raw.shape[1] - 1))
for j in range(raw.shape[1] - 1):
    features[:, j] = raw[:, j].astype(np.float64)
labels = raw[:, -1].astype(np.float64)
print(json.dumps({"seconds": time.perf_counter() - start, "rows": raw.shape[0], "peak_mb": _peak_mb()}))
"""

VALIDATE = """
import sys
from framework.job import validate_job
from framework.jobspec import load_job
validate_job(load_job(sys.argv[1]))
"""

JOB = PEAK + """
import json, sys, time
from pathlib import Path
from framework.job import JobRunner
from framework.jobspec import load_job
start = time.perf_counter()
outcome = JobRunner(load_job(sys.argv[1]), work_dir=Path(sys.argv[2])).run()
print(json.dumps({"seconds": time.perf_counter() - start, "rows": outcome.rows, "peak_mb": _peak_mb()}))
"""

LOAD_ALL = PEAK + """
import json, sys, time
import joblib, numpy as np, pyarrow.parquet as pq
def predict(linear, logistic, x):
    return (linear.predict(x) + logistic.predict_proba(x)[:, 1]) / 2
start = time.perf_counter()
table = pq.read_table(sys.argv[1])
names = [n for n in table.column_names if n.startswith("f")]
x = np.column_stack([table[n].to_numpy() for n in names])
del table
linear, logistic = joblib.load(sys.argv[2]), joblib.load(sys.argv[3])
shard = int(sys.argv[4])
parts = joblib.Parallel(n_jobs=2)(joblib.delayed(predict)(linear, logistic, x[i:i + shard])
                                  for i in range(0, len(x), shard))
out = np.concatenate(parts)
np.save(sys.argv[5], out)
print(json.dumps({"seconds": time.perf_counter() - start, "rows": len(out), "peak_mb": _peak_mb()}))
"""


def child(script: str, *args: object) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"child failed ({result.returncode}): {result.stderr[-2000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def write_data(directory: Path, rows: int, columns: int, seed: int, formats: tuple[str, ...]) -> dict[str, Path]:
    """The same rows as .npy (features then the label as the last column), Parquet and CSV,
    generated and written chunk by chunk."""
    rng = np.random.default_rng(seed)
    names = [f"f{j}" for j in range(columns)]
    schema = pa.schema([(n, pa.float64()) for n in names] + [("y", pa.int64())])
    paths = {kind: directory / f"data-{rows}.{kind}" for kind in formats}
    npy = (np.lib.format.open_memmap(paths["npy"], mode="w+", dtype=np.float64, shape=(rows, columns + 1))
           if "npy" in paths else None)
    parquet = pq.ParquetWriter(paths["parquet"], schema) if "parquet" in paths else None
    csv = pa_csv.CSVWriter(paths["csv"], schema) if "csv" in paths else None
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        x = np.round(rng.normal(size=(n, columns)), 6)
        y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
        table = pa.table([*x.T, y], schema=schema)
        if npy is not None:
            npy[start:start + n, :columns], npy[start:start + n, columns] = x, y
        if parquet is not None:
            parquet.write_table(table, row_group_size=CHUNK)
        if csv is not None:
            csv.write_table(table)
    if npy is not None:
        npy.flush()
    for writer in (parquet, csv):
        if writer is not None:
            writer.close()
    return paths


def write_models(directory: Path, columns: int) -> dict[str, Path]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, columns))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    paths = {"linear": directory / "linear.joblib", "logistic": directory / "logistic.joblib"}
    joblib.dump(LinearRegression().fit(x, y), paths["linear"])
    joblib.dump(LogisticRegression(max_iter=1000).fit(x, y), paths["logistic"])
    return paths


def job_file(directory: Path, data: Path, models: dict[str, Path], columns: int, shard_rows: int,
             with_label: bool) -> Path:
    """The job over ``data``; with its label column (and so an evaluation report) or without it
    (the label column is then simply not read: every other column is a feature, so name them)."""
    label = f"x{columns}" if data.suffix == ".npy" else "y"
    names = [f"x{j}" if data.suffix == ".npy" else f"f{j}" for j in range(columns)]
    lines = ["[job]", f'output = "out-{data.stem}-{data.suffix[1:]}.npy"', 'integration = "mean"', "",
             "[data]", f'path = "{data.name}"', f"rows_per_shard = {shard_rows}",
             f'label = "{label}"' if with_label else "features = [" + ", ".join(f'"{n}"' for n in names) + "]", ""]
    for name, path in models.items():
        lines += ["[[models]]", f'name = "{name}"', f'path = "{path.name}"',
                  f'sha256 = "{hashlib.sha256(path.read_bytes()).hexdigest()}"',
                  f'kind = "{"regressor" if name == "linear" else "classifier"}"',
                  *(['output = "predict_proba"', "proba_class = 1"] if name == "logistic" else []),
                  "cpus = 0.5", "mem = 512", ""]
    path = directory / f"job-{data.stem}-{data.suffix[1:]}.toml"
    path.write_text("\n".join(lines))
    return path


def line(name: str, m: dict[str, float], extra: str = "") -> str:
    return (f"  {name:<28} {m['seconds']:7.2f} s  {m['rows'] / m['seconds']:>11,.0f} rows/s  "
            f"peak {m['peak_mb']:7.0f} MB{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--columns", type=int, default=30)
    parser.add_argument("--shard-rows", type=int, default=50_000)
    parser.add_argument("--factor", type=int, default=4, help="the larger data set has this many times the rows")
    parser.add_argument("--dir", type=Path, default=None, help="work here (default: a temporary directory)")
    parser.add_argument("--label", action="store_true",
                        help="jobs read the label and write the evaluation report (which holds every row's "
                             "outputs in memory: not bounded by the shards)")
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="data-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    rows, columns, shard = args.rows, args.columns, args.shard_rows
    print(f"data: {rows:,} rows x {columns} float64 columns + label ({rows * columns * 8 / 2**20:.0f} MB as "
          f"float64); shards of {shard:,} rows ({shard * columns * 8 / 2**20:.1f} MB); in {directory}")
    data = write_data(directory, rows, columns, 0, ("npy", "parquet", "csv"))
    for kind, path in data.items():
        print(f"  {kind:<8} {path.stat().st_size / 2**20:8.1f} MB  {path.name}")
    models = write_models(directory, columns)

    print("\ningest (read + cut into shard files; old csv: the pre-issue-14 reader, parse only)")
    ingest = {kind: child(INGEST, path, shard, directory / f"shards-{kind}") for kind, path in data.items()
              if kind != "npy"}
    old = child(OLD_CSV, data["csv"])
    print(line("old csv (np.loadtxt)", old))
    for kind, m in ingest.items():
        print(line(f"new {kind}", m))
    csv_speedup = (ingest["csv"]["rows"] / ingest["csv"]["seconds"]) / (old["rows"] / old["seconds"])

    print("\njob end to end on the embedded cluster (linear + logistic, mean; models inspected beforehand)")
    job_files = {kind: job_file(directory, path, models, columns, shard, args.label) for kind, path in data.items()}
    # The first validate inspects the models in a subprocess and caches the answer by checksum: no
    # job below pays for it (else whichever runs first would).
    subprocess.run([sys.executable, "-c", VALIDATE, str(job_files["npy"])], env={**os.environ, "PYTHONPATH": str(ROOT)},
                   check=True, capture_output=True)
    jobs = {kind: child(JOB, job, directory / f"work-{kind}") for kind, job in job_files.items()}
    for kind, m in jobs.items():
        print(line(f"job {kind}", m))
    baseline = child(LOAD_ALL, data["parquet"], models["linear"], models["logistic"], shard, directory / "base.npy")
    print(line("load-all + joblib (parquet)", baseline))
    ours = np.load(directory / f"out-{data['parquet'].stem}-parquet.npy")["prediction"]
    same = np.array_equal(ours, np.load(directory / "base.npy"))

    big_rows = rows * args.factor
    print(f"\nmemory: the Parquet job over {big_rows:,} rows ({big_rows * columns * 8 / 2**20:.0f} MB as float64)")
    big = write_data(directory, big_rows, columns, 1, ("parquet",))
    big_job = child(JOB, job_file(directory, big["parquet"], models, columns, shard, args.label),
                    directory / "work-big")
    print(line(f"job parquet x{args.factor}", big_job))

    shard_mb = shard * columns * 8 / 2**20
    print("\nsummary")
    print(f"  CSV ingestion: {csv_speedup:.1f}x the old reader's rows/s (target >= 5x); old peak "
          f"{old['peak_mb']:.0f} MB, new {ingest['csv']['peak_mb']:.0f} MB")
    print(f"  Parquet job / .npy job wall time: {jobs['parquet']['seconds'] / jobs['npy']['seconds']:.2f} "
          f"(target <= 1.1); CSV job / .npy job: {jobs['csv']['seconds'] / jobs['npy']['seconds']:.2f}")
    ratio = big_job["peak_mb"] / jobs["parquet"]["peak_mb"]
    print(f"  peak framework memory, Parquet job: {jobs['parquet']['peak_mb']:.0f} MB at {rows:,} rows, "
          f"{big_job['peak_mb']:.0f} MB at {big_rows:,} rows (ratio {ratio:.2f}; a shard is {shard_mb:.1f} MB)")
    print(f"  load-all baseline: {baseline['seconds'] / jobs['parquet']['seconds']:.2f}x the Parquet job's time, "
          f"peak {baseline['peak_mb']:.0f} MB; its predictions equal the job's: {same}")


if __name__ == "__main__":
    main()
