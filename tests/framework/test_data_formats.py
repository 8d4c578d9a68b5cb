"""Jobs over Parquet, Feather and quoted CSV data give what scikit-learn gives on the same rows;
a Parquet output keeps the pass-through columns; bad data is refused in one line before launch."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from framework.errors import JobSpecError
from framework.job import JobRunner, validate_job
from framework.jobspec import load_job
from harness import InProcessMesos

FEATURES = [f"f{i}" for i in range(6)]
ROWS = 230


def make_data(directory: Path) -> tuple[pa.Table, dict[str, str]]:
    """A labelled table with a text key and a quoted-comma text column, and two fitted models."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(ROWS, len(FEATURES)))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.3, size=ROWS) > 0).astype(int)
    digests = {}
    for name, model in (("linear", LinearRegression().fit(x, y)),
                        ("logistic", LogisticRegression(max_iter=1000).fit(x, y))):
        joblib.dump(model, directory / f"{name}.joblib")
        digests[name] = hashlib.sha256((directory / f"{name}.joblib").read_bytes()).hexdigest()
    columns: dict[str, object] = {"id": [f"cust-{i:04d}" for i in range(ROWS)],
                                  "note": [f"says \"hi\", row {i}" for i in range(ROWS)]}
    columns.update({name: x[:, j] for j, name in enumerate(FEATURES)})
    columns["target"] = y
    return pa.table(columns), digests


def write_job(directory: Path, data: str, output: str, digests: dict[str, str], extra: str = "") -> Path:
    job = directory / f"job-{Path(data).stem}-{Path(output).suffix[1:]}.toml"
    job.write_text(f"""
[job]
integration = "mean"
output = "{output}"
{extra}

[data]
path = "{data}"
label = "target"
features = {FEATURES!r}
rows_per_shard = 50

[[models]]
name = "linear"
path = "linear.joblib"
sha256 = "{digests['linear']}"
kind = "regressor"

[[models]]
name = "logistic"
path = "logistic.joblib"
sha256 = "{digests['logistic']}"
kind = "classifier"
output = "predict_proba"
proba_class = 1
""".replace("'", '"'))
    return job


def expected(directory: Path, table: pa.Table) -> np.ndarray:
    x = np.column_stack([table[f].to_numpy() for f in FEATURES])
    linear, logistic = joblib.load(directory / "linear.joblib"), joblib.load(directory / "logistic.joblib")
    return np.asarray((linear.predict(x) + logistic.predict_proba(x)[:, 1]) / 2)


@pytest.mark.parametrize("data", ["data.parquet", "data.feather", "data.csv"])
def test_each_format_equals_scikit_learn(tmp_path: Path, data: str) -> None:
    table, digests = make_data(tmp_path)
    path = tmp_path / data
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=64)
    elif path.suffix == ".feather":
        feather.write_feather(table, path, chunksize=70)
    else:
        pa_csv.write_csv(table, path)  # quotes the text columns, with commas and doubled quotes inside
        assert '"says ""hi"", row 0"' in path.read_text()
    job = write_job(tmp_path, data, "out.npy", digests)
    spec = load_job(job)
    kind = {".parquet": "parquet", ".feather": "arrow", ".csv": "csv"}[path.suffix]
    described = validate_job(spec)
    assert f"data: {kind}, 230 rows x 6 features, label 'target'; 5 shards of 50 rows; every row checked" in described
    factory = InProcessMesos.factory([{"agent": "a1", "cpus": 4, "mem": 4096}], tmp_path / "sandboxes")
    outcome = JobRunner(spec, start_local_cluster=False, driver_factory=factory, work_dir=tmp_path / "work").run()
    got = np.load(outcome.output)["prediction"]
    np.testing.assert_array_equal(got, expected(tmp_path, table))  # bit for bit, as VotingRegressor
    assert outcome.report is not None and outcome.report["rows"] == ROWS


def test_parquet_job_on_the_embedded_cluster_keeps_the_key(tmp_path: Path) -> None:
    """Real executors on the embedded cluster; the Parquet output has the id column, then the prediction."""
    table, digests = make_data(tmp_path)
    pq.write_table(table, tmp_path / "data.parquet", row_group_size=64)
    before = b"an earlier output"
    (tmp_path / "out.parquet").write_bytes(before)
    job = write_job(tmp_path, "data.parquet", "out.parquet", digests, 'pass_through = ["id"]')
    outcome = JobRunner(load_job(job), work_dir=tmp_path / "work").run()
    written = pq.read_table(outcome.output)
    assert written.column_names == ["id", "prediction"]
    assert written["id"].to_pylist() == table["id"].to_pylist()
    np.testing.assert_array_equal(written["prediction"].to_numpy(), expected(tmp_path, table))
    assert not list(tmp_path.glob(".out.parquet*"))  # no temporary left beside it


def run_validate(job: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "framework.cli", "validate", str(job)], capture_output=True,
                          text=True, timeout=120, check=False)


def test_bad_data_is_one_line_exit_2(tmp_path: Path) -> None:
    table, digests = make_data(tmp_path)
    pq.write_table(table.set_column(2, "f0", pa.array([str(v) for v in range(ROWS)])), tmp_path / "text.parquet")
    result = run_validate(write_job(tmp_path, "text.parquet", "out.csv", digests))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(
        "text.parquet: column 'f0' is string, expected numbers (feature columns must be numeric; name the ones "
        "to use in [data] features)")
    job = write_job(tmp_path, "text.parquet", "out.csv", digests, 'pass_through = ["id"]')
    with pytest.raises(JobSpecError, match=r"job\.pass_through applies to a \.parquet output"):
        load_job(job)
    (tmp_path / "data.txt").write_text("a\n")
    with pytest.raises(JobSpecError, match=r"data\.path must be a \.parquet, \.feather/\.arrow, \.csv"):
        load_job(write_job(tmp_path, "data.txt", "out.csv", digests))


def test_nan_beyond_the_sample_is_found_before_launch(tmp_path: Path) -> None:
    """validate reads a sample; --scan and run read every row, and refuse the NaN before launching."""
    table, digests = make_data(tmp_path)
    big = pa.concat_tables([table] * 50)  # 11,500 rows: past validate's 10,000-row sample
    values = big["f3"].to_numpy().copy()
    values[11_000] = np.nan
    pq.write_table(big.set_column(5, "f3", pa.array(values)), tmp_path / "gap.parquet")
    job = write_job(tmp_path, "gap.parquet", "out.npy", digests)
    assert "first 10000 rows checked" in validate_job(load_job(job))
    with pytest.raises(JobSpecError, match=r"gap\.parquet: column 'f3', data row 11001: missing value \(NaN\)"):
        validate_job(load_job(job), scan=True)
    with pytest.raises(JobSpecError, match=r"gap\.parquet: column 'f3', data row 11001: missing value \(NaN\)"):
        JobRunner(load_job(job), driver_factory=lambda *a: pytest.fail("launched"),  # noqa: ARG005
                  start_local_cluster=False, work_dir=tmp_path / "work").run()


def test_a_directory_of_parquet_files_is_one_table(tmp_path: Path) -> None:
    """Parts read in name order as one table; the journal fingerprints the directory's files."""
    table, digests = make_data(tmp_path)
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(table.slice(0, 120), parts / "part-000.parquet")
    pq.write_table(table.slice(120), parts / "part-001.parquet")
    job = write_job(tmp_path, "parts", "out.npy", digests)
    factory = InProcessMesos.factory([{"agent": "a1", "cpus": 4, "mem": 4096}], tmp_path / "sandboxes")
    outcome = JobRunner(load_job(job), start_local_cluster=False, driver_factory=factory, work_dir=tmp_path / "work",
                        state_dir=tmp_path / "state").run()
    np.testing.assert_array_equal(np.load(outcome.output)["prediction"], expected(tmp_path, table))
