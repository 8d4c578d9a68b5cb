"""Members that take different columns of the same data: named in the job file, or found from
what the model was fitted on (``feature_names_in_``); each shard is still downloaded once."""

from __future__ import annotations

import csv
import hashlib
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from framework.demo import train_demo
from framework.ensemble import EnsembleCompatibilityError
from framework.errors import JobSpecError
from framework.job import JobRunner, validate_job
from framework.jobspec import load_job
from harness import InProcessMesos

HEAD = [f"f{i}" for i in range(5)]
TAIL = [f"f{i}" for i in range(25, 30)]


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open() as handle:
        rows = list(csv.reader(handle))
    return rows[0], np.array(rows[1:], dtype=float)


def write_job(directory: Path, tail_features: list[str]) -> Path:
    header, train = read_csv(directory / "train.csv")
    columns = {name: i for i, name in enumerate(header)}
    x, y = train[:, :-1], train[:, -1].astype(int)
    head = LogisticRegression(max_iter=5000).fit(x[:, [columns[c] for c in HEAD]], y)
    head.feature_names_in_ = np.asarray(HEAD, dtype=object)  # what a DataFrame fit records (pandas is not a dependency)
    tail = LinearRegression().fit(x[:, [columns[c] for c in TAIL]], y)
    joblib.dump(head, directory / "head.joblib")
    joblib.dump(tail, directory / "tail.joblib")
    digest = {n: hashlib.sha256((directory / f"{n}.joblib").read_bytes()).hexdigest() for n in ("head", "tail")}
    job = directory / "columns.toml"
    job.write_text(f"""
[job]
integration = "mean"
output = "columns.csv"

[data]
path = "test.csv"
label = "target"
rows_per_shard = 60

[[models]]
name = "head"
path = "head.joblib"
sha256 = "{digest['head']}"
kind = "classifier"
output = "predict_proba"
proba_class = 1

[[models]]
name = "tail"
path = "tail.joblib"
sha256 = "{digest['tail']}"
kind = "regressor"
features = {tail_features!r}
""".replace("'", '"'))
    return job


@pytest.fixture()
def demo_dir(tmp_path: Path) -> Path:
    return train_demo(tmp_path / "demo").parent


@pytest.mark.filterwarnings("ignore:X does not have valid feature names")  # in-process runner (the executor filters it)
def test_members_get_their_own_columns(demo_dir: Path, tmp_path: Path) -> None:
    spec = load_job(write_job(demo_dir, TAIL))
    assert "head: classifier, predict_proba, weight 1.0; columns f0, f1, f2, f3, f4" in validate_job(spec)
    factory = InProcessMesos.factory([{"agent": "a1", "cpus": 4, "mem": 4096}], tmp_path / "sandboxes")
    outcome = JobRunner(spec, start_local_cluster=False, driver_factory=factory).run()

    header, test = read_csv(demo_dir / "test.csv")
    columns = {name: i for i, name in enumerate(header)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ndarray input to a model with feature names
        head = joblib.load(demo_dir / "head.joblib").predict_proba(test[:, [columns[c] for c in HEAD]])[:, 1]
    tail = joblib.load(demo_dir / "tail.joblib").predict(test[:, [columns[c] for c in TAIL]])
    np.testing.assert_allclose(read_csv(outcome.output)[1][:, 0], (head + tail) / 2, rtol=0, atol=1e-12)
    # One executor on the agent downloaded each shard once for both members.
    sandbox = next((tmp_path / "sandboxes").glob("a1/*"))
    assert len(list((sandbox / "cache").glob("*.npy"))) == 3  # 171 rows in shards of 60


def test_unknown_column_is_named(demo_dir: Path) -> None:
    spec = load_job(write_job(demo_dir, ["f25", "f99"]))
    with pytest.raises(JobSpecError, match=r"models\[1\] \(tail\)\.features names columns that are not feature "
                                           r"columns of test\.csv: \['f99'\] \(it has f0, f1"):
        validate_job(spec)


def test_column_count_mismatch_is_a_compatibility_error(demo_dir: Path) -> None:
    spec = load_job(write_job(demo_dir, TAIL[:3]))
    with pytest.raises(EnsembleCompatibilityError,
                       match=r"model tail: expects 5 features \(n_features_in_\) but is given 3 columns"):
        validate_job(spec)
