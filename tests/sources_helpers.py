"""A two-source Parquet job for the ``[[sources]]`` tests: breast-cancer features in one table and
five more columns in a second one, joined by ``id``; the second table is in another row order
and lacks one key."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LinearRegression, LogisticRegression

from job_files import model_table

FEATURES = [f"f{i}" for i in range(10)]
EXTRA = [f"e{i}" for i in range(5)]
MISSING_KEY = 1407
"""The primary key the second source lacks."""


def write_sources(directory: Path, missing: str = "drop", rows_per_shard: int = 50, extra_models: str = "",
                  executors: str = "shared") -> Path:
    """Write ``features.parquet`` (id, f0..f9, target; small row groups), ``extra.parquet`` (id,
    e0..e4 from later columns, shuffled, without ``MISSING_KEY``), three models and the job file."""
    directory.mkdir(parents=True, exist_ok=True)
    x, y = load_breast_cancer(return_X_y=True)
    ids = np.arange(1000, 1000 + len(y), dtype=np.int64)
    features = pa.table({"id": ids[400:], **{c: x[400:, i] for i, c in enumerate(FEATURES)}, "target": y[400:]})
    pq.write_table(features, directory / "features.parquet", row_group_size=40)
    order = np.random.default_rng(3).permutation(len(y))
    order = order[ids[order] != MISSING_KEY]
    extra = pa.table({"id": ids[order], **{c: x[order, 10 + i] for i, c in enumerate(EXTRA)}})
    pq.write_table(extra, directory / "extra.parquet", row_group_size=64)
    models = _models()
    job = directory / "sources.toml"
    job.write_text(f"""
[job]
integration = "mean"
output = "predictions.csv"
report = "report.json"

[data]
label = "target"
rows_per_shard = {rows_per_shard}
primary = "features"
missing = "{missing}"

[[sources]]
name = "features"
path = "features.parquet"
key = "id"

[[sources]]
name = "extra"
path = "extra.parquet"
key = "id"

{model_table(directory, "linear", models["linear"], kind="regressor", source="features", cpus=0.5, mem=128)}
{model_table(directory, "logistic", models["logistic"], kind="classifier", output="predict_proba", proba_class=1,
             source="extra", cpus=0.5, mem=128)}
{model_table(directory, "both", models["both"], kind="classifier", output="predict_proba", proba_class=1,
             columns={"extra": ["e2", "e3"], "features": ["f0", "f1"]}, cpus=0.5, mem=128)}
{extra_models}
[framework]
executors = "{executors}"
""")
    return job


@functools.cache
def _models() -> dict[str, Any]:
    """The three members, fitted once per test process on the first 400 rows."""
    x, y = load_breast_cancer(return_X_y=True)
    train = slice(0, 400)
    linear = LinearRegression().fit(x[train, :10], y[train])
    linear.feature_names_in_ = np.asarray(FEATURES, dtype=object)  # as a DataFrame fit records them
    logistic = LogisticRegression(max_iter=5000).fit(x[train, 10:15], y[train])
    both = LogisticRegression(max_iter=5000).fit(np.hstack([x[train, 12:14], x[train, 0:2]]), y[train])
    return {"linear": linear, "logistic": logistic, "both": both}


def joined_frame(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The join computed independently (pyarrow's hash join), in the primary's row order:
    (ids, features f0..f9 then e0..e4, labels)."""
    features = pq.read_table(directory / "features.parquet")
    features = features.append_column("position", pa.array(np.arange(features.num_rows)))
    joined = features.join(pq.read_table(directory / "extra.parquet"), "id", join_type="inner").sort_by("position")
    values = np.column_stack([joined.column(c).to_numpy() for c in FEATURES + EXTRA])
    return joined.column("id").to_numpy(), values, joined.column("target").to_numpy()


def expected_mean(directory: Path, rows_per_shard: int) -> np.ndarray:
    """scikit-learn on the joined frame, shard by shard (LinearRegression's last bits depend on the
    batch), averaged as ``integration = "mean"`` does."""
    _ids, values, _labels = joined_frame(directory)
    linear, logistic, both = (joblib.load(directory / f"{n}.joblib") for n in ("linear", "logistic", "both"))
    outputs = []
    for start in range(0, len(values), rows_per_shard):
        rows = values[start:start + rows_per_shard]
        outputs.append(np.mean(np.stack([
            linear.predict(np.ascontiguousarray(rows[:, 0:10])),
            logistic.predict_proba(np.ascontiguousarray(rows[:, 10:15]))[:, 1],
            both.predict_proba(np.ascontiguousarray(rows[:, [12, 13, 0, 1]]))[:, 1],
        ]), axis=0))
    return np.concatenate(outputs)
